"""The WebShop catalogue and its goals, processed as the original ``load_products`` / ``get_goals`` do,
but deterministic: product prices inside a price range and each goal's price cap come from one seeded
generator, so every process and every run sees the same prices and the same goal texts.

Data: the 1k catalogue shipped in ``data/`` (provenance in ``data/SOURCE.md``); the full 1.18M-product
files load the same way when passed as paths (``items_shuffle.json``, ``items_ins_v2.json``,
``items_human_ins.json``).

Goals, as the original builds them:

* synthetic: one goal per product with an instruction and per combination of its option values; the
  text is ``instruction + " with <option>: <value>, and ..." + ", and price lower than X dollars"``;
  weight = mean over its attributes of 1 / (goals with that attribute);
* human: one goal per human instruction with at least one attribute (weight 1).

Both lists are shuffled with ``random.Random(233)``; the test split is ``goals[:500]``, train the rest.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, Literal

__all__ = ["Catalog", "Goal", "Product", "load_catalog", "search_document", "write_search_documents"]

DATA_DIR = Path(__file__).resolve().parent / "data"
PRODUCTS = DATA_DIR / "items_shuffle_1000.json.gz"
ATTRIBUTES = DATA_DIR / "items_ins_v2_1000.json.gz"
HUMAN = DATA_DIR / "items_human_ins_1000subset.json.gz"
SEARCH_DOCUMENTS = DATA_DIR / "search_documents_1k.jsonl.gz"
PRICE_STEPS = [10.0 * i for i in range(1, 100)]  # the original's price-cap grid
GOAL_SHUFFLE_SEED = 233
TEST_GOALS = 500


@dataclass
class Product:
    asin: str
    title: str
    description: str
    bullet_points: list[str]
    category: str  # beauty, electronics, garden, fashion, grocery
    query: str
    product_category: str  # "A › B › C"
    price_tag: str  # "$X" or "$X to $Y", as shown on the page
    pricing: list[float]
    price: float  # the price a purchase is charged (seeded inside a range)
    options: dict[str, list[str]]  # option name -> values (lower-cased, "/" -> " | ")
    option_images: dict[str, str | None]
    attributes: list[str]
    rating: str = "N.A."
    reviews: list[dict[str, Any]] = field(default_factory=list)
    main_image: str = ""
    instruction: str | None = None
    instruction_attributes: list[str] | None = None
    human_instructions: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Goal:
    asin: str
    instruction: str
    attributes: tuple[str, ...]
    goal_options: tuple[tuple[str, str], ...]  # (option name, value); human goals have names ""
    price_upper: float
    category: str
    query: str
    name: str  # the target product's title (the reward's type match uses it)
    product_category: str
    weight: float = 1.0

    @property
    def option_values(self) -> list[str]:
        return [v for _, v in self.goal_options]


def _read_json(path: Path) -> Any:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        import ast

        try:
            parsed = ast.literal_eval(value)
            return list(parsed) if isinstance(parsed, (list, tuple)) else [value]
        except (ValueError, SyntaxError):
            return [value]
    return [value]


def _parse_pricing(raw: Any) -> tuple[list[float], str]:
    if not raw:
        return [100.0], "$100.0"
    if isinstance(raw, list):  # already parsed (the index's stored records)
        values = [float(v) for v in raw]
    else:
        values = [float(Decimal(re.sub(r"[^\d.]", "", part))) for part in str(raw).split("$")[1:]]
    if len(values) == 1:
        return values, f"${values[0]}"
    return values[:2], f"${values[0]} to ${values[1]}"


def _options(raw: Any) -> tuple[dict[str, list[str]], dict[str, str | None]]:
    options: dict[str, list[str]] = {}
    images: dict[str, str | None] = {}
    if isinstance(raw, dict):
        for name, contents in raw.items():
            if contents is None:
                continue
            values = []
            for content in contents:
                value = content["value"].strip().replace("/", " | ").lower()
                values.append(value)
                images[value] = content.get("image")
            options[name.lower()] = values
    return options, images


@dataclass
class Catalog:
    products: list[Product]
    by_asin: dict[str, Product]
    synthetic_goals: list[Goal]
    human_goals: list[Goal]

    def goals(
        self, kind: Literal["synthetic", "human"] = "synthetic", split: Literal["train", "test", "all"] = "all"
    ) -> list[Goal]:
        goals = self.synthetic_goals if kind == "synthetic" else self.human_goals
        if split == "test":
            return goals[:TEST_GOALS]
        if split == "train":
            return goals[TEST_GOALS:]
        if split == "all":
            return list(goals)
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")


def data_paths() -> tuple[Path, Path, Path | None]:
    """The catalogue files: ``$SDAR_WEBSHOP_PRODUCTS`` / ``_ATTRIBUTES`` / ``_HUMAN`` (e.g. the full
    1.18M-product ``items_shuffle.json``, ``items_ins_v2.json``, ``items_human_ins.json``), else the 1k
    catalogue shipped with the package."""
    env = os.environ
    human = env.get("SDAR_WEBSHOP_HUMAN", str(HUMAN))
    return (
        Path(env.get("SDAR_WEBSHOP_PRODUCTS", PRODUCTS)),
        Path(env.get("SDAR_WEBSHOP_ATTRIBUTES", ATTRIBUTES)),
        Path(human) if human else None,
    )


def load_catalog(
    products: str | os.PathLike[str] | None = None,
    attributes: str | os.PathLike[str] | None = None,
    human: str | os.PathLike[str] | None = None,
    *,
    num_products: int | None = None,
    seed: int = 0,
) -> Catalog:
    """Products and goals, deterministic for a given ``seed`` (prices, then price caps, in file order).
    Paths default to :func:`data_paths`."""
    default_products, default_attributes, default_human = data_paths()
    products, attributes = products or default_products, attributes or default_attributes
    human = human if human is not None else default_human
    for path in (products, attributes, human):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"WebShop data file not found: {path}")
    return _load(str(products), str(attributes), None if human is None else str(human), num_products, seed)


@cache
def _load(
    products_path: str, attributes_path: str, human_path: str | None, num_products: int | None, seed: int
) -> Catalog:
    raw_products = _read_json(Path(products_path))
    attrs = _read_json(Path(attributes_path))
    human = _read_json(Path(human_path)) if human_path else {}
    if num_products is not None:
        raw_products = raw_products[:num_products]
    rng = random.Random(seed)
    products: list[Product] = []
    seen: set[str] = set()
    for p in raw_products:
        asin = p["asin"]
        if asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        seen.add(asin)
        pricing, price_tag = _parse_pricing(p.get("pricing"))
        options, images = _options(p.get("customization_options"))
        info = attrs.get(asin, {})
        images_list = _as_list(p.get("images") or [""])
        products.append(
            Product(
                asin=asin,
                title=p["name"],
                description=p.get("full_description") or "",
                bullet_points=[str(b) for b in _as_list(p.get("small_description") or "")],
                category=p["category"],
                query=str(p["query"]).lower().strip(),
                product_category=p.get("product_category") or "",
                price_tag=price_tag,
                pricing=pricing,
                price=pricing[0] if len(pricing) == 1 else rng.uniform(pricing[0], pricing[1]),
                options=options,
                option_images=images,
                attributes=info["attributes"] if "attributes" in info else ["DUMMY_ATTR"],
                main_image=str(images_list[0]) if images_list else "",
                instruction=info.get("instruction"),
                instruction_attributes=info.get("instruction_attributes"),
                human_instructions=list(human.get(asin, [])),
            )
        )
    synthetic = _synthetic_goals(products, rng)
    humans = _human_goals(products, rng)
    random.Random(GOAL_SHUFFLE_SEED).shuffle(synthetic)
    random.Random(GOAL_SHUFFLE_SEED).shuffle(humans)
    return Catalog(products, {p.asin: p for p in products}, synthetic, humans)


def _price_cap(price: float, rng: random.Random) -> tuple[float, str]:
    steps = [s for s in PRICE_STEPS if s > price][:4]
    if len(steps) >= 2:
        _, upper = sorted(rng.sample(steps, 2))
        return upper, f", and price lower than {upper:.2f} dollars"
    return 1_000_000.0, ""


def _synthetic_goals(products: Sequence[Product], rng: random.Random) -> list[Goal]:
    drafts = []
    counts: dict[str, int] = defaultdict(int)
    for p in products:
        if not p.instruction:
            continue
        attributes = tuple(p.instruction_attributes or ())
        upper, price_text = _price_cap(p.price, rng)
        names = sorted(p.options)
        for combination in itertools.product(*(p.options[n] for n in names)):
            chosen = tuple(zip(names, combination, strict=True))
            option_text = ", and ".join(f"{k}: {v}" for k, v in chosen)
            option_text = f" with {option_text}" if option_text else ""
            drafts.append((p, attributes, chosen, upper, f"{p.instruction}{option_text}{price_text}"))
            for att in attributes:
                counts[att] += 1
    goals = []
    for p, attributes, chosen, upper, text in drafts:
        weight = sum(1.0 / counts[a] for a in attributes) / len(attributes) if attributes else 1.0
        goals.append(
            Goal(p.asin, text, attributes, chosen, upper, p.category, p.query, p.title, p.product_category, weight)
        )
    return goals


def _human_goals(products: Sequence[Product], rng: random.Random) -> list[Goal]:
    goals = []
    for p in products:
        for record in p.human_instructions:
            attributes = tuple(record.get("instruction_attributes") or ())
            if not attributes:
                continue
            upper, price_text = _price_cap(p.price, rng)
            options = tuple(("", v) for v in record.get("instruction_options") or ())
            text = record["instruction"].strip(".") + price_text
            goals.append(
                Goal(p.asin, text, attributes, options, upper, p.category, p.query, p.title, p.product_category, 1.0)
            )
    return goals


def search_document(product: Product) -> dict[str, str]:
    """The text the original indexed for a product: title, description, first bullet point and the
    options ("name: v1, v2, and name2: ..."), lower-cased."""
    option_text = ", and ".join(f"{name}: {', '.join(values)}" for name, values in product.options.items())
    first_bullet = product.bullet_points[0] if product.bullet_points else ""
    return {
        "id": product.asin,
        "contents": " ".join([product.title, product.description, first_bullet, option_text]).lower(),
    }


def write_search_documents(catalog: Catalog, out: str | os.PathLike[str]) -> Path:
    """A JSONL corpus (``{"id", "contents"}``) to index, e.g. for the full 1.18M-product catalogue."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for p in catalog.products:
            f.write(json.dumps(search_document(p)) + "\n")
    os.replace(tmp, out)
    return out
