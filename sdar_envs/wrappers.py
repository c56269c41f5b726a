"""Behaviour added to any ``SDAR/*`` environment by wrapping it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from skills.base import SkillMemory, SkillQuery

__all__ = ["EpisodeSkills", "SkillHook", "env_name"]


def env_name(env_or_id: gym.Env | str) -> str:
    """The short name skill memories use for an environment: ``"SDAR/ALFWorld-v0"`` -> ``"alfworld"``
    (an env without a registered id: its class name, ``AlfworldEnv`` -> ``"alfworld"``)."""
    if isinstance(env_or_id, str):
        spec_id = env_or_id
    else:
        spec_id = getattr(getattr(env_or_id, "spec", None), "id", None) or type(env_or_id.unwrapped).__name__
    name = spec_id.split("/")[-1].split("-")[0].lower()
    return name[: -len("env")] if name.endswith("env") and len(name) > len("env") else name


_name_of = env_name  # SkillHook's keyword argument of the same name shadows it


@dataclass
class EpisodeSkills:
    """One episode's side of the skill protocol, shared by :class:`SkillHook` and the trainer's rollout:
    skills retrieved at reset, the outcome recorded once when the episode ends."""

    memory: SkillMemory
    query: SkillQuery
    ids: list[str]
    texts: list[str]
    reported: bool = False

    @classmethod
    def retrieve(cls, memory: SkillMemory, name: str, info: dict[str, Any], k: int) -> EpisodeSkills:
        query = SkillQuery(name, info["task_id"], info["task"], info["task_type"])
        chosen = memory.retrieve(query, k)
        return cls(memory, query, [s.id for s in chosen], [s.text for s in chosen])

    def record(self, *, won: bool, episode_return: float) -> None:
        if not self.reported:
            self.reported = True
            self.memory.record_outcome(self.query, self.ids, success=won, reward=episode_return)


class SkillHook(gym.Wrapper[str, str, str, str]):
    """Asks a skill memory for skills at reset and tells it the outcome when the episode ends.

    Adds to ``info`` at reset (and keeps on every step): ``skills`` (list of skill texts, the teacher's
    privileged context) and ``skill_ids``. When the episode terminates or is truncated the memory's
    ``record_outcome`` is called once with ``success = info["won"]`` and the episode's summed reward.
    """

    def __init__(self, env: gym.Env[str, str], memory: SkillMemory, *, k: int = 3, env_name: str | None = None) -> None:
        super().__init__(env)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.memory = memory
        self.k = k
        self.env_name = env_name or _name_of(env)
        self._episode: EpisodeSkills | None = None
        self._return = 0.0

    def _with_skills(self, info: dict[str, Any]) -> dict[str, Any]:
        ids, texts = (self._episode.ids, self._episode.texts) if self._episode else ([], [])
        return {**info, "skills": list(texts), "skill_ids": list(ids)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._episode = EpisodeSkills.retrieve(self.memory, self.env_name, info, self.k)
        self._return = 0.0
        return obs, self._with_skills(info)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        if (terminated or truncated) and self._episode is not None:
            self._episode.record(won=bool(info["won"]), episode_return=self._return)
        return obs, float(reward), terminated, truncated, self._with_skills(info)
