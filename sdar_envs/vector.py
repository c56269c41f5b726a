"""Many environments stepping in parallel worker processes, for group rollouts.

Why not ``gymnasium.vector.AsyncVectorEnv``: it steps *every* sub-environment on each call and gives
one ``options`` dict to all of them, while a multi-turn LLM rollout needs (a) a different ``task_id``
per slot (B tasks x G copies), and (b) finished episodes to leave the batch instead of being stepped
with a dummy action or auto-reset. :class:`EnvPool` steps any subset of its environments and resets
each with its own options. The environments themselves remain plain Gymnasium envs, so
``gymnasium.make_vec`` works on them too when lock-step stepping is what you want.

The engines are GIL-bound Python, so parallelism comes from processes. Workers start with ``spawn``
(safe beside torch threads and a JVM) and each owns ``num_envs / num_workers`` environments.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym

__all__ = ["EnvPool", "EnvPoolError"]

StepResult = tuple[str, float, bool, bool, dict[str, Any]]
EnvFactory = Callable[[], gym.Env]


class EnvPoolError(RuntimeError):
    """An environment raised inside a worker; the message carries the worker's traceback."""


def _make(env_id: str | EnvFactory, env_kwargs: Mapping[str, Any]) -> gym.Env:
    if callable(env_id):
        return env_id()
    import sdar_envs  # noqa: F401  (registers SDAR/* in a fresh spawned process)

    return gym.make(env_id, **env_kwargs)


def _serve(envs: dict[int, gym.Env], command: str, payload: Any) -> Any:
    if command == "reset":
        return {i: envs[i].reset(seed=seed, options=opts) for i, seed, opts in payload}
    if command == "step":
        return {i: envs[i].step(action) for i, action in payload}
    if command == "call":
        name, args, kwargs = payload
        return {i: getattr(env.unwrapped, name)(*args, **kwargs) for i, env in envs.items()}
    raise ValueError(f"unknown command {command!r}")


def _worker(conn: Any, env_id: str | EnvFactory, env_kwargs: Mapping[str, Any], indices: list[int]) -> None:
    envs: dict[int, gym.Env] = {}
    try:
        envs = {i: _make(env_id, env_kwargs) for i in indices}
        conn.send(("ok", None))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    try:
        while True:
            command, payload = conn.recv()
            if command == "close":
                break
            try:
                conn.send(("ok", _serve(envs, command, payload)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        for env in envs.values():
            env.close()
        conn.close()


class EnvPool:
    """``num_envs`` environments in ``num_workers`` processes (0: all in this process).

    Args:
        env_id: a registered id (``"SDAR/ALFWorld-v0"``) or a picklable zero-argument factory.
        num_envs: how many environments (e.g. B tasks x G group size).
        num_workers: worker processes; default ``min(num_envs, os.cpu_count())``. Environment ``i``
            lives in worker ``i % num_workers``.
        env_kwargs: keyword arguments for ``gymnasium.make``.
    """

    def __init__(
        self,
        env_id: str | EnvFactory,
        num_envs: int,
        *,
        num_workers: int | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        start_method: str = "spawn",
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        import os

        self.num_envs = num_envs
        self.num_workers = min(num_envs, os.cpu_count() or 1) if num_workers is None else num_workers
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        kwargs = dict(env_kwargs or {})
        self._local: dict[int, gym.Env] = {}
        self._conns: list[Any] = []
        self._procs: list[mp.process.BaseProcess] = []
        self._closed = False
        if self.num_workers == 0:
            self._local = {i: _make(env_id, kwargs) for i in range(num_envs)}
            return
        ctx = mp.get_context(start_method)
        for w in range(self.num_workers):
            indices = list(range(w, num_envs, self.num_workers))
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, env_id, kwargs, indices), daemon=True, name=f"EnvPool-{w}")
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for w, conn in enumerate(self._conns):
            self._receive(w, conn)

    # --- public API -----------------------------------------------------------------------------
    def reset(
        self,
        indices: Sequence[int] | None = None,
        *,
        seeds: Sequence[int | None] | None = None,
        options: Sequence[dict[str, Any] | None] | dict[str, Any] | None = None,
    ) -> dict[int, tuple[str, dict[str, Any]]]:
        """Reset the given environments (default all), each with its own seed and options."""
        indices = list(range(self.num_envs)) if indices is None else list(indices)
        seeds = list(seeds) if seeds is not None else [None] * len(indices)
        if options is None or isinstance(options, dict):
            options = [options] * len(indices)
        if not len(seeds) == len(options) == len(indices):
            raise ValueError("indices, seeds and options must have the same length")
        return self._dispatch("reset", list(zip(indices, seeds, options, strict=True)))

    def step(self, actions: Mapping[int, str]) -> dict[int, StepResult]:
        """Step only the environments named in ``actions`` (index -> raw LLM output)."""
        return self._dispatch("step", list(actions.items()))

    def call(self, name: str, *args: Any, **kwargs: Any) -> dict[int, Any]:
        """Call a method of every (unwrapped) environment."""
        if self.num_workers == 0:
            return _serve(self._local, "call", (name, args, kwargs))
        results: dict[int, Any] = {}
        for conn in self._conns:
            conn.send(("call", (name, args, kwargs)))
        for w, conn in enumerate(self._conns):
            results.update(self._receive(w, conn))
        return results

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for env in self._local.values():
            env.close()
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
        for conn in self._conns:
            conn.close()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # --- plumbing -----------------------------------------------------------------------------
    def _dispatch(self, command: str, items: list[tuple]) -> dict[int, Any]:
        if self._closed:
            raise RuntimeError("EnvPool is closed")
        for item in items:
            if not 0 <= item[0] < self.num_envs:
                raise IndexError(f"environment index {item[0]} out of range (num_envs={self.num_envs})")
        if self.num_workers == 0:
            try:
                return _serve(self._local, command, items)
            except Exception as e:
                raise EnvPoolError(traceback.format_exc()) from e
        by_worker: dict[int, list[tuple]] = {}
        for item in items:
            by_worker.setdefault(item[0] % self.num_workers, []).append(item)
        for w, part in by_worker.items():
            self._conns[w].send((command, part))
        results: dict[int, Any] = {}
        errors = []
        for w in by_worker:
            try:
                results.update(self._receive(w, self._conns[w]))
            except EnvPoolError as e:
                errors.append(str(e))
        if errors:
            raise EnvPoolError("\n".join(errors))
        return {item[0]: results[item[0]] for item in items}

    def _receive(self, w: int, conn: Any) -> Any:
        try:
            status, payload = conn.recv()
        except EOFError as e:
            raise EnvPoolError(f"worker {w} died (exit code {self._procs[w].exitcode})") from e
        if status == "error":
            raise EnvPoolError(f"worker {w} raised:\n{payload}")
        return payload
