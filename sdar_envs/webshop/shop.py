"""The shop as pure functions: a :class:`ShopState` (which page, with which search, product and options)
is rendered into a :class:`Page`: its text, its clickable elements and where each leads.

The in-process environment, the Flask site and the HTTP client all use these functions, so the three
agree by construction. Pages and buttons are the original's: search -> results (10 per page of the top
50, ``Next >`` / ``< Prev``) -> item (options, Description / Features / Reviews, ``Buy Now``) -> done.
Clickables are lower-cased button texts, product ASINs (lower-case) and option values.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlencode

from sdar_envs.webshop.catalog import (
    SEARCH_DOCUMENTS,
    Catalog,
    Goal,
    Product,
    data_paths,
    load_catalog,
    write_search_documents,
)
from sdar_envs.webshop.reward import RewardBreakdown, score_purchase

__all__ = ["Page", "PageSource", "Shop", "ShopState", "clickable_key", "parse_action", "state_url"]

SEARCH_RETURN_N = 50
MAX_QUERY_CHARS = 500  # a longer search is an invalid action (the site answers 400 to it)
SEARCH_CACHE_SIZE = 20_000
PRODUCTS_PER_PAGE = 10
SUB_PAGES = ("description", "features", "reviews", "attributes")
View = Literal["search", "results", "item", "sub", "done"]


@dataclass(frozen=True)
class ShopState:
    view: View = "search"
    keywords: str = ""
    page: int = 1
    asin: str = ""
    options: tuple[tuple[str, str], ...] = ()  # chosen (option name, value), in click order
    sub: str = ""  # description | features | reviews | attributes


@dataclass
class Page:
    state: ShopState
    parts: list[str]  # the page's text, element by element (what "text" observations join with [SEP])
    clickables: dict[str, ShopState] = field(default_factory=dict)  # clickable text -> state it leads to
    has_search_bar: bool = False
    products: list[Product] = field(default_factory=list)  # results shown
    product: Product | None = None
    reward: RewardBreakdown | None = None
    total_results: int = 0

    def text(self) -> str:
        return " [SEP] ".join(self.parts)

    def text_rich(self) -> str:
        """Buttons marked ``[button] x [button_]``, clicked options ``[clicked button] x [clicked button_]``."""
        chosen = {v for _, v in self.state.options}
        out = []
        for part in self.parts:
            key = part.lower()
            if key in chosen:
                out.append(f"[clicked button] {part} [clicked button_]")
            elif key in self.clickables or (part == "Search" and self.has_search_bar):
                out.append(f"[button] {part} [button_]")
            else:
                out.append(part)
        return "\n".join(out)


class PageSource:
    """Anything that renders shop pages; stepping is defined once, on top of :meth:`render`."""

    def render(self, state: ShopState, goal: Goal) -> Page:
        raise NotImplementedError

    def step(self, state: ShopState, goal: Goal, action: str) -> tuple[ShopState, bool]:
        """The state an action leads to, and whether it was valid (invalid: the same state)."""
        kind, arg = parse_action(action)
        if kind is None:
            return state, False
        if kind == "search":
            if state.view != "search" or not arg or len(arg) > MAX_QUERY_CHARS:  # one rule, in-process and over HTTP
                return state, False
            return ShopState("results", arg, 1), True
        clickables = self.render(state, goal).clickables
        target = clickables.get(arg)
        if target is None:  # a few option values hold a no-break space, which the command's key has not
            target = next((t for text, t in clickables.items() if clickable_key(text) == arg), None)
        return (target, True) if target is not None else (state, False)


class Shop(PageSource):
    """A catalogue, its goals and its BM25 search (Pyserini, k1 0.9, b 0.4, top 50)."""

    def __init__(
        self,
        catalog: Catalog | None = None,
        *,
        index_dir: str | os.PathLike[str] | None = None,
        search_documents: str | os.PathLike[str] | None = None,
        colour: Literal["original", "words"] = "original",
    ) -> None:
        self.catalog = catalog or load_catalog()
        self.colour = colour
        self._index_dir = index_dir
        self._documents = Path(search_documents) if search_documents else None
        self._cache: OrderedDict[str, list[str]] = OrderedDict()  # keywords -> ASINs, least recently used first

    def documents(self) -> Path:
        """The corpus to index: the shipped one for the shipped catalogue, else one written from the
        catalogue (the same text the original indexed) into the cache."""
        if self._documents is not None:
            return self._documents
        from sdar_envs.webshop.catalog import PRODUCTS

        if self.catalog.products and data_paths()[0] == PRODUCTS and len(self.catalog.products) == 1000:
            return SEARCH_DOCUMENTS
        import hashlib

        digest = hashlib.sha256("".join(p.asin for p in self.catalog.products).encode()).hexdigest()[:16]
        from sdar_envs.lucene import cache_root

        out = cache_root().parent / "webshop" / f"documents-{digest}.jsonl"
        return out if out.exists() else write_search_documents(self.catalog, out)

    @cached_property
    def searcher(self):
        from sdar_envs.lucene import BM25Searcher, cached_index

        index = self._index_dir or cached_index(self.documents(), "webshop")
        return BM25Searcher(index, k1=0.9, b=0.4)

    def search(self, keywords: str) -> list[str]:
        """ASINs of the top 50 products for the keywords (cached per keywords)."""
        if keywords in self._cache:
            self._cache.move_to_end(keywords)
            return self._cache[keywords]
        hits = self.searcher.search(keywords, SEARCH_RETURN_N) if keywords.strip() else []
        asins = [a for a in (json.loads(h.raw).get("id", h.docid) for h in hits) if a in self.catalog.by_asin]
        self._cache[keywords] = asins
        if len(self._cache) > SEARCH_CACHE_SIZE:  # a long training run issues millions of distinct queries
            self._cache.popitem(last=False)
        return asins

    # -- pages ------------------------------------------------------------------------------------------
    def render(self, state: ShopState, goal: Goal) -> Page:
        if state.view == "search":
            return Page(state, ["WebShop", "Instruction:", goal.instruction, "Search"], {}, has_search_bar=True)
        back = ShopState("search")
        if state.view == "results":
            asins = self.search(state.keywords)
            last = max(1, (len(asins) + PRODUCTS_PER_PAGE - 1) // PRODUCTS_PER_PAGE)
            page = min(max(state.page, 1), last)
            shown = [self.catalog.by_asin[a] for a in asins[(page - 1) * PRODUCTS_PER_PAGE : page * PRODUCTS_PER_PAGE]]
            parts = ["Back to Search", f"Page {page} (Total results: {len(asins)})"]
            clicks = {"back to search": back}
            if page > 1:
                parts.append("< Prev")
                clicks["< prev"] = replace(state, page=page - 1)
            if page < last:
                parts.append("Next >")
                clicks["next >"] = replace(state, page=page + 1)
            for p in shown:
                parts += [p.asin, p.title, p.price_tag]
                clicks[p.asin.lower()] = ShopState("item", state.keywords, page, p.asin)
            return Page(replace(state, page=page), parts, clicks, products=shown, total_results=len(asins))
        product = self.catalog.by_asin[state.asin]
        if state.view == "item":
            parts = ["Back to Search", "< Prev"]
            clicks = {"back to search": back, "< prev": ShopState("results", state.keywords, state.page)}
            for name, values in product.options.items():
                parts.append(name)
                for value in values:
                    parts.append(value)
                    chosen = tuple((n, v) for n, v in state.options if n != name) + ((name, value),)
                    clicks.setdefault(value, replace(state, options=chosen))
            parts += [
                product.title,
                f"Price: {product.price_tag}",
                f"Rating: {product.rating}",
                "Description",
                "Features",
                "Reviews",
                "Buy Now",
            ]
            for sub in SUB_PAGES[:3]:
                clicks[sub] = replace(state, view="sub", sub=sub)
            clicks["buy now"] = replace(state, view="done")
            return Page(state, parts, clicks, product=product)
        if state.view == "sub":
            body = {
                "description": [product.description],
                "features": list(product.bullet_points),
                "reviews": [str(r.get("body", "")) for r in product.reviews],
                "attributes": list(product.attributes),
            }[state.sub]
            clicks = {"back to search": back, "< prev": replace(state, view="item", sub="")}
            return Page(state, ["Back to Search", "< Prev", *body], clicks, product=product)
        # done: the purchase is scored once, here
        reward = score_purchase(product, goal, dict(state.options), colour=self.colour)
        parts = ["Thank you for shopping with us!", f"Your score (min 0.0, max 1.0): {reward.score:.4f}"]
        return Page(state, parts, {}, product=product, reward=reward)


def clickable_key(text: str) -> str:
    """How a click names a clickable: lower-cased, each run of white space (a no-break space too) one space."""
    return " ".join(text.split()).lower()


def parse_action(text: str) -> tuple[str | None, str]:
    """``search[...]`` / ``click[...]`` (case-insensitive), else (None, ""); a click's argument as
    :func:`clickable_key` has it."""
    import re

    m = re.fullmatch(r"\s*(search|click)\s*\[(.*)\]\s*", text or "", flags=re.IGNORECASE | re.DOTALL)
    if m is None:
        return None, ""
    kind = m.group(1).lower()
    return kind, (" ".join(m.group(2).split()) if kind == "search" else clickable_key(m.group(2)))


def available_actions(page: Page) -> dict[str, object]:
    return {
        "has_search_bar": page.has_search_bar,
        "clickables": (["search"] if page.has_search_bar else []) + list(page.clickables),
    }


def state_url(sid: str, state: ShopState, kind: str = "synthetic") -> str:
    """The site's URL of a shop state (``servers.webshop.app``'s routes are its inverse)."""
    params: list[tuple[str, str]] = []
    if kind != "synthetic":
        params.append(("goals", kind))
    if state.view in ("results", "item", "sub"):
        params += [("q", state.keywords), ("page", str(state.page))]
    if state.view in ("item", "sub", "done"):
        params += [("opt", f"{n}:{v}") for n, v in state.options]
    query = f"?{urlencode(params)}" if params else ""
    path = {
        "search": f"/{sid}",
        "results": f"/{sid}/results",
        "item": f"/{sid}/item/{state.asin}",
        "sub": f"/{sid}/item/{state.asin}/{state.sub}",
        "done": f"/{sid}/done/{state.asin}",
    }[state.view]
    return path + query
