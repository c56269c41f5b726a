"""What every :class:`~sdar_envs.env_pool.EnvPool` back-end runs where its environments live (in this
process, a worker process or a Ray actor): make an environment, answer one command, and the error a
failed command becomes. Both back-ends import it; it imports neither."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym

__all__ = ["EnvFactory", "EnvPoolError", "make_env", "serve"]

EnvFactory = Callable[[], gym.Env]


class EnvPoolError(RuntimeError):
    """An environment raised inside a worker (the message carries the worker's traceback), or a worker
    died or stopped answering (the message names it)."""


def make_env(env_id: str | EnvFactory, env_kwargs: Mapping[str, Any]) -> gym.Env:
    """A registered id made with ``env_kwargs``, or a zero-argument factory called."""
    if callable(env_id):
        return env_id()
    import sdar_envs  # noqa: F401  (registers SDAR/* in a fresh spawned process)

    return gym.make(env_id, **env_kwargs)


def serve(envs: dict[int, gym.Env], command: str, payload: Any) -> Any:
    """One command (``reset``, ``step`` or ``call``) for the environments it names; results by index."""
    if command == "reset":
        return {i: envs[i].reset(seed=seed, options=opts) for i, seed, opts in payload}
    if command == "step":
        return {i: envs[i].step(action) for i, action in payload}
    if command == "call":
        name, args, kwargs = payload
        return {i: getattr(env.unwrapped, name)(*args, **kwargs) for i, env in envs.items()}
    raise ValueError(f"unknown command {command!r}")
