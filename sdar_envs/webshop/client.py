"""The environment's HTTP back-end: the same pages, rendered by a running ``sdar-webshop`` site."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from sdar_envs.http import Replicas, retrying_session
from sdar_envs.webshop.catalog import Goal, load_catalog
from sdar_envs.webshop.reward import RewardBreakdown
from sdar_envs.webshop.shop import Page, PageSource, ShopState, state_url

__all__ = ["RemoteShop", "WebShopServiceError"]


class WebShopServiceError(ConnectionError):
    """The site could not be reached or answered with an error; names the URL."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        super().__init__(f"webshop at {url}: {problem}")


def _state(d: dict[str, Any]) -> ShopState:
    return ShopState(
        d["view"], d["keywords"], int(d["page"]), d["asin"], tuple((n, v) for n, v in d["options"]), d["sub"]
    )


class RemoteShop(PageSource):
    """Drop-in for :class:`~sdar_envs.webshop.shop.Shop` whose pages come from the site over HTTP."""

    def __init__(
        self, url: str | Sequence[str], *, colour: Literal["original", "words"] = "original", timeout: float = 30.0
    ) -> None:
        """``url``: the site, or several replicas of it (a list or ``"http://a:3000,http://b:3000"``): the
        site keeps no state between requests, so pages are spread over them (:class:`Replicas`)."""
        if colour != "original":
            raise ValueError(
                "the HTTP back-end scores with the site's reward; start the site with the colour mode you want"
            )
        self.replicas = Replicas(url)
        self.url = str(self.replicas)
        self.catalog = load_catalog()  # goals and expert paths; the site holds the same (seeded) catalogue
        self.timeout = timeout
        self._session = retrying_session(("GET",))  # a search or a page read may be sent again
        self._sid: dict[Goal, tuple[str, str]] = {}
        for kind in ("synthetic", "human"):
            for i, g in enumerate(self.catalog.goals(kind, "all")):
                self._sid.setdefault(g, (f"fixed_{i}", kind))

    def render(self, state: ShopState, goal: Goal) -> Page:
        import requests

        sid, kind = self._sid[goal]
        path = state_url(sid, state, kind)
        try:
            resp, base = self.replicas.call(
                lambda base: self._session.get(base + path, params={"format": "json"}, timeout=self.timeout)
            )
        except requests.RequestException as e:
            self._session.close()
            raise WebShopServiceError(self.url, f"unreachable ({type(e).__name__}: {e})") from e
        if resp.status_code != 200:
            raise WebShopServiceError(base, f"HTTP {resp.status_code} for {base + path}")
        data = resp.json()
        page = Page(
            _state(data["state"]),
            list(data["parts"]),
            {k: _state(v) for k, v in data["clickables"].items()},
            has_search_bar=bool(data["has_search_bar"]),
            total_results=int(data["total_results"]),
        )
        if data["reward"] is not None:
            page.reward = RewardBreakdown(**data["reward"])
        return page
