"""The skill memory: a bank of skills with usage statistics, a retrieval tier, and optional persistence."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from skills.base import Skill, SkillQuery, SkillStats
from skills.retrieval import Retriever, make_retriever
from skills.store import SEED_BANKS, load_skills, seed_bank_path, write_unlocked, writer_lock

__all__ = ["SkillLibrary"]


class SkillLibrary:
    """A skill memory: implements :class:`skills.SkillMemory` for the environments' skill hook.

    ``retrieve`` asks the retrieval tier for the query environment's skills and counts the retrieval;
    ``record_outcome`` adds the finished episode to the shown skills' stats (what the ``ucb`` tier learns
    from). With ``path`` set, :meth:`save` writes skills and stats there atomically.

    >>> lib = SkillLibrary.from_seed_banks(tier="keyword")
    >>> [s.id for s in lib.retrieve(SkillQuery("alfworld", "t", "heat some egg and put it in garbagecan", "heat"), k=2)]
    ['alfworld/heat/microwave', 'alfworld/general/search']
    """

    def __init__(
        self,
        skills: Iterable[Skill | tuple[Skill, SkillStats]] = (),
        *,
        tier: str | Retriever = "keyword",
        seed: int = 0,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.retriever: Retriever = make_retriever(tier, seed=seed) if isinstance(tier, str) else tier
        self.tier = tier if isinstance(tier, str) else type(tier).__name__
        self.path = Path(path) if path is not None else None
        self._skills: dict[str, Skill] = {}
        self.stats: dict[str, SkillStats] = {}
        self._lock = threading.Lock()  # rollout threads may retrieve and record at once
        for item in skills:
            skill, stats = item if isinstance(item, tuple) else (item, SkillStats())
            self.add(skill, stats)
        # what the file held when last read or written: save() merges other writers' work on top of it
        self._saved_at: dict[Path, dict[str, SkillStats]] = {}
        if self.path is not None:
            self._saved_at[self.path] = {sid: replace(st) for sid, st in self.stats.items()}
        self._removed: set[str] = set()

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_seed_banks(cls, envs: Sequence[str] = SEED_BANKS, **kwargs) -> SkillLibrary:
        """The packaged seed banks of the given environments (all three by default)."""
        items = [item for env in envs for item in load_skills(seed_bank_path(env))]
        return cls(items, **kwargs)

    @classmethod
    def load(
        cls, *paths: str | os.PathLike[str], save_to: str | os.PathLike[str] | None = None, **kwargs
    ) -> SkillLibrary:
        """Skills and stats from skill files (see :mod:`skills.store`); later files may not repeat ids.

        ``save_to`` defaults to the only file when one is given.
        """
        items = [item for p in paths for item in load_skills(p)]
        if save_to is None and len(paths) == 1:
            save_to = paths[0]
        return cls(items, path=save_to, **kwargs)

    # -- the bank -----------------------------------------------------------------------------------
    def add(self, skill: Skill, stats: SkillStats | None = None) -> None:
        if skill.id in self._skills:
            raise ValueError(f"duplicate skill id {skill.id!r}")
        self._skills[skill.id] = skill
        self.stats[skill.id] = stats or SkillStats()

    def remove(self, skill_id: str) -> Skill:
        self.stats.pop(skill_id, None)
        skill = self._skills.pop(skill_id)
        self._removed.add(skill_id)
        return skill

    def get(self, skill_id: str) -> Skill:
        try:
            return self._skills[skill_id]
        except KeyError:
            raise KeyError(f"no skill {skill_id!r}") from None

    def skills(self, env: str | None = None) -> list[Skill]:
        """All skills (of one environment), in insertion order."""
        return [s for s in self._skills.values() if env is None or s.env == env]

    def __len__(self) -> int:
        return len(self._skills)

    def __contains__(self, skill_id: object) -> bool:
        return skill_id in self._skills

    # -- the SkillMemory protocol -------------------------------------------------------------------
    def retrieve(self, query: SkillQuery, k: int) -> list[Skill]:
        if k <= 0:
            return []
        with self._lock:
            chosen = self.retriever.select(query, self.skills(query.env), self.stats, k)
            for skill in chosen:
                self.stats[skill.id].retrieved += 1
        return chosen

    def record_outcome(self, query: SkillQuery, skill_ids: Sequence[str], *, success: bool, reward: float) -> None:
        with self._lock:
            for sid in skill_ids:
                if sid in self.stats:  # a skill removed mid-episode is simply not counted
                    self.stats[sid].episodes += 1
                    self.stats[sid].successes += int(success)

    # -- persistence --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write skills and stats to ``path`` (default: the library's), merging what other writers put
        there since this library last read or wrote it: their new skills are kept (and taken in), and
        usage counts add up. The file's lock is held from the read to the write, so no writer's record
        is lost. Skills this library removed stay removed."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("no path: pass one to save() or construct the library with path=")
        target.parent.mkdir(parents=True, exist_ok=True)
        with writer_lock(target):
            on_disk = load_skills(target) if target.exists() and target.stat().st_size else []
            with self._lock:
                base = self._saved_at.get(target, {})
                for skill, disk in on_disk:
                    if skill.id in self._removed:
                        continue
                    if skill.id not in self._skills:  # another writer's skill
                        self._skills[skill.id], self.stats[skill.id] = skill, replace(disk)
                        continue
                    ours, seen = self.stats[skill.id], base.get(skill.id, SkillStats())
                    self.stats[skill.id] = SkillStats(
                        **{k: getattr(disk, k) + getattr(ours, k) - getattr(seen, k) for k in vars(ours)}
                    )
                items = [(s, replace(self.stats[s.id])) for s in self._skills.values()]
                self._saved_at[target] = {s.id: replace(st) for s, st in items}
            write_unlocked(target, items)
        return target
