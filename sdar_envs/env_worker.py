"""What every :class:`~sdar_envs.env_pool.EnvPool` back-end runs where its environments live (in this
process, a worker process or a Ray actor): make an environment, answer one command, and the error a
failed command becomes. Both back-ends import it; it imports neither."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

__all__ = ["EnvFactory", "EnvFailure", "EnvPoolError", "failure_summary", "make_env", "serve"]

EnvFactory = Callable[[], gym.Env]


class EnvPoolError(RuntimeError):
    """An environment raised inside a worker (the message carries the worker's traceback), or a worker
    died or stopped answering (the message names it)."""


@dataclass(frozen=True)
class EnvFailure:
    """What an environment gives instead of its result when a call failed for it (``isolate=True``):
    it raised (``cause`` ends with the traceback), or its worker died or stopped answering."""

    index: int
    cause: str

    @property
    def summary(self) -> str:
        """The cause's last line (the exception, or the worker's fate)."""
        return failure_summary(self.cause)


def failure_summary(cause: str) -> str:
    """A failure's cause in one line: its last (the exception, or the worker's fate)."""
    lines = [ln.strip() for ln in cause.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "failed"


def make_env(env_id: str | EnvFactory, env_kwargs: Mapping[str, Any]) -> gym.Env:
    """A registered id made with ``env_kwargs``, or a zero-argument factory called."""
    if callable(env_id):
        return env_id()
    import sdar_envs  # noqa: F401  (registers SDAR/* in a fresh spawned process)

    return gym.make(env_id, **env_kwargs)


def serve(envs: dict[int, gym.Env], command: str, payload: Any) -> Any:
    """One command (``reset``, ``step`` or ``call``) for the environments it names; results by index.
    An environment that raises in ``reset`` or ``step`` gives an :class:`EnvFailure` with its traceback,
    and the others still answer (one bad episode must not take its neighbours with it)."""
    if command in ("reset", "step"):
        out: dict[int, Any] = {}
        for item in payload:
            i = item[0]
            try:
                out[i] = envs[i].reset(seed=item[1], options=item[2]) if command == "reset" else envs[i].step(item[1])
            except Exception:
                out[i] = EnvFailure(i, f"environment {i} raised in {command}:\n{traceback.format_exc()}")
        return out
    if command == "call":
        name, args, kwargs = payload
        return {i: getattr(env.unwrapped, name)(*args, **kwargs) for i, env in envs.items()}
    raise ValueError(f"unknown command {command!r}")
