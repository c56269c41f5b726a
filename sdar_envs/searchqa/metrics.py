"""Answer scoring as in Search-R1 / the NQ-open convention: exact match after normalisation, plus F1
and substring match for analysis."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

__all__ = ["exact_match", "f1_score", "normalize_answer", "substring_match"]

_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golden_answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golden_answers))


def substring_match(prediction: str, golden_answers: Sequence[str]) -> float:
    """1.0 when a normalised gold answer occurs inside the normalised prediction (Search-R1's cover EM)."""
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(g) and normalize_answer(g) in pred for g in golden_answers))


def f1_score(prediction: str, golden_answers: Sequence[str]) -> float:
    """The best token-level F1 against any gold answer (SQuAD's definition)."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golden_answers:
        ref = normalize_answer(gold).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
