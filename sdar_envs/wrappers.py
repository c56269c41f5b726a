"""Behaviour added to any ``SDAR/*`` environment by wrapping it."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from skills.base import SkillMemory, SkillQuery

__all__ = ["SkillHook"]


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
        self.env_name = env_name or _env_name(env)
        self._query: SkillQuery | None = None
        self._skill_ids: list[str] = []
        self._skills: list[str] = []
        self._return = 0.0
        self._reported = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._query = SkillQuery(self.env_name, info["task_id"], info["task"], info["task_type"])
        chosen = self.memory.retrieve(self._query, self.k)
        self._skill_ids = [s.id for s in chosen]
        self._skills = [s.text for s in chosen]
        self._return, self._reported = 0.0, False
        return obs, {**info, "skills": list(self._skills), "skill_ids": list(self._skill_ids)}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        if (terminated or truncated) and not self._reported and self._query is not None:
            self._reported = True
            self.memory.record_outcome(self._query, self._skill_ids, success=bool(info["won"]), reward=self._return)
        return (
            obs,
            reward,
            terminated,
            truncated,
            {**info, "skills": list(self._skills), "skill_ids": list(self._skill_ids)},
        )


def _env_name(env: gym.Env) -> str:
    spec_id = getattr(getattr(env, "spec", None), "id", None) or type(env.unwrapped).__name__
    return spec_id.split("/")[-1].split("-")[0].lower().replace("env", "")
