"""The skill record, its usage statistics, the query an environment asks with, and the memory protocol
the environments' skill hook talks to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Skill", "SkillMemory", "SkillQuery", "SkillStats"]


@dataclass(frozen=True)
class Skill:
    """A short natural-language procedure the teacher may be shown.

    ``task_types`` empty means a general skill, good for any task of its environment. ``keywords`` are
    words of a task's instruction that make the skill relevant (used by the keyword tier).
    """

    id: str
    title: str
    text: str
    env: str  # "alfworld", "webshop", "searchqa", or a user's own environment name
    task_types: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()

    @property
    def general(self) -> bool:
        return not self.task_types

    def applies_to(self, task_type: str) -> bool:
        """General skills apply to every task type; specific ones to their own."""
        return self.general or task_type in self.task_types


@dataclass
class SkillStats:
    """How a skill has been used: times retrieved, episodes whose teacher saw it, and their successes."""

    retrieved: int = 0
    episodes: int = 0
    successes: int = 0

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.episodes if self.episodes else None


@dataclass(frozen=True)
class SkillQuery:
    """What an environment knows about the task when it asks for skills."""

    env: str
    task_id: str
    task: str
    task_type: str


@runtime_checkable
class SkillMemory(Protocol):
    """What the environments' skill hook needs from a skill memory."""

    def retrieve(self, query: SkillQuery, k: int) -> list[Skill]:
        """Up to ``k`` skills for this task, most useful first."""
        ...

    def record_outcome(self, query: SkillQuery, skill_ids: Sequence[str], *, success: bool, reward: float) -> None:
        """Told once per finished episode which skills were shown and how it went."""
        ...
