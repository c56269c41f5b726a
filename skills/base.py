"""The skill record, the memory protocol the environments' hook uses, and a minimal in-memory store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["InMemorySkillMemory", "Skill", "SkillMemory", "SkillQuery"]


@dataclass(frozen=True)
class Skill:
    """A short natural-language procedure the teacher may be shown."""

    id: str
    title: str
    text: str
    env: str  # "alfworld", "webshop", "searchqa"
    task_types: tuple[str, ...] = ()  # empty: a general skill, good for any task of its env
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkillQuery:
    """What an environment knows about the task when it asks for skills."""

    env: str
    task_id: str
    task: str
    task_type: str


@dataclass
class _Stats:
    retrieved: int = 0
    episodes: int = 0
    successes: int = 0


@runtime_checkable
class SkillMemory(Protocol):
    """What the environments' skill hook needs from a skill memory."""

    def retrieve(self, query: SkillQuery, k: int) -> list[Skill]:
        """Up to ``k`` skills for this task, most useful first."""
        ...

    def record_outcome(self, query: SkillQuery, skill_ids: Sequence[str], *, success: bool, reward: float) -> None:
        """Told once per finished episode which skills were shown and how it went."""
        ...


@dataclass
class InMemorySkillMemory:
    """Routes by environment and task type: the task type's own skills first, then general ones.

    Keeps per-skill usage counts (times retrieved, episodes, successes) in memory.
    """

    skills: list[Skill] = field(default_factory=list)
    stats: dict[str, _Stats] = field(default_factory=dict)

    def add(self, skills: Iterable[Skill]) -> None:
        known = {s.id for s in self.skills}
        for skill in skills:
            if skill.id in known:
                raise ValueError(f"duplicate skill id {skill.id!r}")
            known.add(skill.id)
            self.skills.append(skill)

    def retrieve(self, query: SkillQuery, k: int) -> list[Skill]:
        mine = [s for s in self.skills if s.env == query.env]
        specific = [s for s in mine if query.task_type in s.task_types]
        general = [s for s in mine if not s.task_types]
        chosen = (specific + general)[: max(k, 0)]
        for s in chosen:
            self.stats.setdefault(s.id, _Stats()).retrieved += 1
        return chosen

    def record_outcome(self, query: SkillQuery, skill_ids: Sequence[str], *, success: bool, reward: float) -> None:
        for sid in skill_ids:
            st = self.stats.setdefault(sid, _Stats())
            st.episodes += 1
            st.successes += int(success)
