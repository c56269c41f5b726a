"""A WebShop expert that knows only what the agent knows: the instruction, the page's admissible actions
and its own last command.

WebShop's target-path expert (``expert="target"``) searches the target product's exact title, which the
instruction never shows, so a policy cloned from it learns to invent titles. This one does what a
careful shopper would:

1. ``search[<the instruction up to its price clause>]``;
2. on a results page, click the first product;
3. on the product page, click each option value the instruction names (``color: brown-6``: the whole
   value, so not ``4x`` for ``4x-large tall``), in the instruction's order, one per turn (the last
   command says which one comes next: the one the instruction names after it);
4. ``click[buy now]``.

On every fifth of the 500 test goals it scores 0.788 and buys the exact target on 57%, in 4.6 turns
(0.783 and 4.8 turns when it also clicked values that begin a named one, until 2026-12-05; the packaged
WebShop warm starts were cloned from that version). :func:`checklist_reply` is the same shopper with its
plan in its thought (``expert="checklist"``). ``careful=False``
is the careless variant that buys without choosing options (with ``vague_search``, after searching the
product without its attributes), the habit the CPU miniature's skills correct. The miniature's
demonstrator (``sdar_train.miniature.demonstrator``) drives this from the prompt text alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sdar_envs.webshop.shop import clickable_key, parse_action

__all__ = ["NOT_OPTIONS", "checklist_reply", "named_options", "options_left", "search_query", "shopper_action"]

_ASIN = re.compile(r"click\[(b[0-9a-z]{9})\]")
# page buttons that are not option values
NOT_OPTIONS = frozenset(
    {"back to search", "< prev", "next >", "description", "features", "reviews", "attributes", "buy now"}
)


def search_query(task: str, *, vague: bool = False) -> str:
    """The instruction up to its price clause; ``vague``: only up to its first " with " (the product
    without the attributes the instruction names)."""
    query = re.split(r",? and price lower than", task, maxsplit=1)[0].strip()
    return query.split(" with ", 1)[0].strip() if vague else query


def _clicks(admissible: Sequence[str]) -> list[str]:
    return [a[len("click[") : -1] for a in admissible if a.startswith("click[") and a.endswith("]")]


def named_options(task: str, values: Sequence[str]) -> list[str]:
    """The option ``values`` (a page's) that the instruction names, as ``size: 4x-large tall`` does, in
    the instruction's order: the whole value, up to the next comma or the end, so that ``4x`` or
    ``4x-large`` beside ``4x-large tall`` is not clicked too (the click after it would replace it). Where
    two values start at the same place (``black`` and ``black, white``), the longer one. The
    instruction's order, not the page's: which option comes after the last one clicked is then the
    value written after it in the instruction, a lookup a cloned model can copy."""
    text = clickable_key(task)  # compared as the shop compares clicks (a few values hold a no-break space)
    longest: dict[int, str] = {}
    for value in values:
        key = clickable_key(value)
        for m in re.finditer(rf": ({re.escape(key)})(?=,|$)", text):
            if len(key) > len(clickable_key(longest.get(m.start(1), ""))):
                longest[m.start(1)] = value
    return [longest[start] for start in sorted(longest)]


def options_left(task: str, admissible: Sequence[str], last_action: str = "") -> list[str]:
    """On a product page, the option values the instruction names that come after ``last_action`` in its
    order (all of them when the last action was not one of them): what the careful shopper clicks next."""
    wanted = named_options(task, [c for c in _clicks(admissible) if c not in NOT_OPTIONS])
    kind, last = parse_action(last_action)  # the last action names the one done
    done = [clickable_key(w) for w in wanted]
    return wanted[done.index(last) + 1 :] if kind == "click" and last in done else wanted


def checklist_reply(task: str, admissible: Sequence[str], last_action: str = "") -> str:
    """The careful shopper's reply with its plan written out: on a product page its thought lists the
    options it has still to click (``<think>Options to click: 'pale coral red', 'large'.</think>``), so a
    policy cloned from it reads in its own last reply which option comes next, where the page (the
    ``text`` mode marks no chosen option) and the bare last command leave it to the instruction; elsewhere
    the thought is empty."""
    action = shopper_action(task, admissible, last_action)
    thought = ""
    if "click[buy now]" in admissible:
        left = options_left(task, admissible, last_action)
        thought = "Options to click: " + (", ".join(f"'{v}'" for v in left) if left else "none") + "."
    return f"<think>{thought}</think><action>{action}</action>"


def shopper_action(
    task: str, admissible: Sequence[str], last_action: str = "", *, careful: bool = True, vague_search: bool = False
) -> str:
    """The next command (without tags) on the page whose admissible actions are ``admissible``, for the
    instruction ``task``, after ``last_action`` (a command such as ``click[red]``; "" at the start).
    ``careful=False``: buy without choosing options; ``vague_search`` (careless only): search the product
    without its attributes."""
    clicks = _clicks(admissible)
    if any(a.startswith("search[") for a in admissible):
        return f"search[{search_query(task, vague=vague_search and not careful)}]"
    products = [m.group(1) for a in admissible if (m := _ASIN.fullmatch(a))]
    if products and "buy now" not in clicks:
        return f"click[{products[0]}]"
    if "buy now" in clicks:
        left = options_left(task, admissible, last_action) if careful else []
        return f"click[{left[0]}]" if left else "click[buy now]"
    return "click[back to search]" if "back to search" in clicks else (clicks[0] if clicks else "search[]")
