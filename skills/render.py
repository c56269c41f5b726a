"""The skills block of the teacher's prompt, fitted into a token budget by cutting skills, never the
rest of the prompt."""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["SKILLS_HEADER", "fit_skills", "privileged_prefix", "skills_block"]

SKILLS_HEADER = "[Privileged Skill Information]"


def skills_block(skills: Sequence[str]) -> str:
    """The privileged context block the SDAR teacher's prompt starts with ("" when there are no skills)."""
    body = "\n".join(f"- {s.strip()}" for s in skills if s and s.strip())
    return f"{SKILLS_HEADER}\n{body}\n\n" if body else ""


def privileged_prefix(skills: Sequence[str]) -> str:
    """The SDAR reference's privileged block: the header, the skill texts separated by a blank line, then a
    blank line ("" when there are no skills). It goes before the whole chat-formatted teacher prompt."""
    body = "\n\n".join(s.strip() for s in skills if s and s.strip())
    return f"{SKILLS_HEADER}\n{body}\n\n" if body else ""


def fit_skills(
    skills: Sequence[str],
    max_tokens: int,
    count_tokens: Callable[[str], int],
    render: Callable[[Sequence[str]], str] = skills_block,
) -> list[str]:
    """The longest prefix of ``skills`` whose rendering (``render``: :func:`skills_block` or
    :func:`privileged_prefix`) costs at most ``max_tokens``.

    Skills are kept whole in order of relevance; the first one that does not fit is cut at a word
    boundary (with "...") if a useful part of it fits, and the rest are dropped. ``count_tokens`` is
    the tokenizer's length function, e.g. ``lambda s: len(tok(s, add_special_tokens=False).input_ids)``.
    Returns ``[]`` when not even the header fits.
    """
    kept: list[str] = []
    for skill in skills:
        if count_tokens(render([*kept, skill])) <= max_tokens:
            kept.append(skill)
            continue
        words = skill.split()
        lo, hi = 0, len(words) - 1  # binary search the longest word prefix that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count_tokens(render([*kept, " ".join(words[:mid]) + " ..."])) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        if lo >= 3:  # a stub of one or two words tells the teacher nothing
            kept.append(" ".join(words[:lo]) + " ...")
        break
    return kept
