"""Many environments stepping in parallel worker processes, for group rollouts.

Why not ``gymnasium.vector.AsyncVectorEnv``: it steps *every* sub-environment on each call and gives
one ``options`` dict to all of them, while a multi-turn LLM rollout needs (a) a different ``task_id``
per slot (B tasks x G copies), and (b) finished episodes to leave the batch instead of being stepped
with a dummy action or auto-reset. :class:`EnvPool` steps any subset of its environments and resets
each with its own options. The environments themselves remain plain Gymnasium envs, so
``gymnasium.make_vec`` works on them too when lock-step stepping is what you want.

The engines are GIL-bound Python, so parallelism comes from processes. Workers start with ``spawn``
(safe beside torch threads and a JVM) and each owns ``num_envs / num_workers`` environments.

Failures are loud and bounded: every request carries a call number that its reply echoes, so a reply
is never taken for another call's; a worker that dies, or answers nothing within ``timeout`` seconds
(stopped, hung), is killed and raises :class:`EnvPoolError` naming it. Its environments are then down
until :meth:`EnvPool.restart` re-creates them (they need a reset) or the pool is closed.

``reset(..., isolate=True)`` and ``step(..., isolate=True)`` contain a failure to the environments it
hit, as a training rollout needs (one failed episode must cost that episode, not the step): each of
them answers an :class:`EnvFailure` naming the cause instead of raising, the others answer as usual,
and a worker that died or hung is restarted before the call returns (its environments then need a
reset; if it cannot be restarted, that raises).

With worker processes (``spawn``), a script that makes a pool must guard its entry point with
``if __name__ == "__main__":`` (every worker re-imports the main module).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym

from sdar_envs.env_worker import EnvFactory, EnvFailure, EnvPoolError, make_env, serve
from sdar_envs.ray_workers import RayWorkers

__all__ = ["EnvFailure", "EnvPool", "EnvPoolError"]


def _worker(conn: Any, env_id: str | EnvFactory, env_kwargs: Mapping[str, Any], indices: list[int]) -> None:
    envs: dict[int, gym.Env] = {}
    try:
        envs = {i: make_env(env_id, env_kwargs) for i in indices}
        conn.send((0, "ok", None))
    except BaseException:
        conn.send((0, "error", traceback.format_exc()))
        return
    try:
        while True:
            call, command, payload = conn.recv()
            if command == "close":
                break
            try:
                conn.send((call, "ok", serve(envs, command, payload)))
            except Exception:
                conn.send((call, "error", traceback.format_exc()))
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
        timeout: seconds a worker may take to answer one call (or to start) before it is declared
            stuck, killed and reported; None waits forever.
        backend: ``"process"`` (worker processes on this machine) or ``"ray"`` (Ray actors anywhere in a
            Ray cluster, :mod:`sdar_envs.ray_workers`; the optional extra ``sdar[ray]``), same contract.
        ray_address: the cluster to join (``"auto"``, ``"ray://host:10001"``); None: the running one, or a
            local instance.
        ray_actor_options: Ray resources of each worker actor (default ``{"num_cpus": 1}``).
    """

    def __init__(
        self,
        env_id: str | EnvFactory,
        num_envs: int,
        *,
        num_workers: int | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        start_method: str = "spawn",
        timeout: float | None = 600.0,
        backend: str = "process",
        ray_address: str | None = None,
        ray_actor_options: Mapping[str, Any] | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        import os

        self.num_envs = num_envs
        self.num_workers = min(num_envs, os.cpu_count() or 1) if num_workers is None else num_workers
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 or None, got {timeout}")
        self.timeout = timeout
        self._env_id, self._kwargs = env_id, dict(env_kwargs or {})
        self._local: dict[int, gym.Env] = {}
        self._conns: list[Any] = []
        self._procs: list[mp.process.BaseProcess] = []
        self._down: dict[int, str] = {}  # worker -> why it is down
        self._calls = itertools.count(1)
        self._closed = False
        self._ray: Any = None
        if backend not in ("process", "ray"):
            raise ValueError(f"backend must be 'process' or 'ray', got {backend!r}")
        if self.num_workers == 0:
            self._local = {i: make_env(env_id, self._kwargs) for i in range(num_envs)}
            return
        if backend == "ray":
            self._ray = RayWorkers(
                env_id,
                self._kwargs,
                num_envs,
                self.num_workers,
                timeout,
                address=ray_address,
                actor_options=ray_actor_options,
            )
            return
        self._ctx: Any = mp.get_context(start_method)
        for w in range(self.num_workers):
            conn, proc = self._spawn(w)
            self._conns.append(conn)
            self._procs.append(proc)
        try:
            for w in range(self.num_workers):
                self._receive(w, 0)
        except EnvPoolError:
            self.close()
            raise

    # --- public API -----------------------------------------------------------------------------
    def reset(
        self,
        indices: Sequence[int] | None = None,
        *,
        seeds: Sequence[int | None] | None = None,
        options: Sequence[dict[str, Any] | None] | dict[str, Any] | None = None,
        isolate: bool = False,
    ) -> dict[int, Any]:
        """Reset the given environments (default all), each with its own seed and options: ``(obs, info)``
        by index, or with ``isolate`` an :class:`EnvFailure` for each environment that failed."""
        indices = list(range(self.num_envs)) if indices is None else list(indices)
        seeds = list(seeds) if seeds is not None else [None] * len(indices)
        if options is None or isinstance(options, dict):
            options = [options] * len(indices)
        if not len(seeds) == len(options) == len(indices):
            raise ValueError("indices, seeds and options must have the same length")
        return self._dispatch("reset", list(zip(indices, seeds, options, strict=True)), isolate)

    def step(self, actions: Mapping[int, str], *, isolate: bool = False) -> dict[int, Any]:
        """Step only the environments named in ``actions`` (index -> raw LLM output): the step's 5-tuple by
        index, or with ``isolate`` an :class:`EnvFailure` for each environment that failed."""
        return self._dispatch("step", list(actions.items()), isolate)

    def call(self, name: str, *args: Any, **kwargs: Any) -> dict[int, Any]:
        """Call a method of every (unwrapped) environment."""
        if self.num_workers == 0:
            return serve(self._local, "call", (name, args, kwargs))
        results, errors = self._request("call", {w: (name, args, kwargs) for w in range(self.num_workers)})
        if errors:
            raise EnvPoolError("\n".join(errors.values()))
        return results

    @property
    def worker_pids(self) -> list[int]:
        """The worker processes' ids (to watch their memory; empty in-process or with Ray)."""
        return [p.pid for p in self._procs if p.pid is not None]

    @property
    def down_workers(self) -> dict[int, str]:
        """Workers that died or stopped answering, with the reason; their environments raise until restarted."""
        return dict(self._ray.down if self._ray is not None else self._down)

    def restart(self, workers: Sequence[int] | None = None) -> None:
        """Replace the given workers (default: every one that is down) with fresh processes; their
        environments are created anew and need a reset."""
        if self._closed:
            raise RuntimeError("EnvPool is closed")
        for w in sorted(self.down_workers) if workers is None else list(workers):
            if not 0 <= w < self.num_workers:
                raise IndexError(f"worker {w} out of range (num_workers={self.num_workers})")
            if self._ray is not None:
                self._ray.restart(w)
                continue
            self._stop(w)
            self._conns[w], self._procs[w] = self._spawn(w)
            self._down.pop(w, None)
            self._receive(w, 0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for env in self._local.values():
            env.close()
        if self._ray is not None:
            self._ray.close()
            return
        for w, conn in enumerate(self._conns):
            if w in self._down:
                continue
            try:
                conn.send((0, "close", None))
            except (BrokenPipeError, OSError):
                pass
        for w in range(len(self._procs)):
            self._stop(w, grace=10.0)

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
    def _spawn(self, w: int) -> tuple[Any, mp.process.BaseProcess]:
        indices = list(range(w, self.num_envs, self.num_workers))
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_worker, args=(child, self._env_id, self._kwargs, indices), daemon=True, name=f"EnvPool-{w}"
        )
        proc.start()
        child.close()
        return parent, proc

    def _stop(self, w: int, grace: float = 0.0) -> None:
        proc = self._procs[w]
        proc.join(timeout=grace)
        if proc.is_alive():
            proc.kill()  # SIGKILL also ends a stopped (SIGSTOP) process
            proc.join(timeout=5)
        self._conns[w].close()

    @staticmethod
    def _died(proc: mp.process.BaseProcess, call: int) -> str:
        why = f"died (exit code {proc.exitcode})"
        if call == 0:  # at start-up: the classic cause is a script without a main guard under spawn
            why += ' while starting; a script that creates an EnvPool at module level must guard it with if __name__ == "__main__":'
        return why

    def _fail(self, w: int, why: str) -> EnvPoolError:
        """Mark worker ``w`` down, kill it, and make the error that says so."""
        self._down[w] = why
        try:
            self._stop(w)
        except Exception:
            pass
        envs = list(range(w, self.num_envs, self.num_workers))
        return EnvPoolError(
            f"worker {w} (environments {envs}) {why}; pool.restart() re-creates its environments, or close the pool"
        )

    def _request(self, command: str, parts: dict[int, Any]) -> tuple[dict[int, Any], dict[int, str]]:
        """Send one call to each worker in ``parts``, then collect every reply (a failure in one worker
        never leaves another's reply unread): the results by environment, and the workers that failed
        with why."""
        down = self.down_workers
        errors = {
            w: f"worker {w} is down ({down[w]}); pool.restart() re-creates its environments, or close the pool"
            for w in parts
            if w in down
        }
        parts = {w: p for w, p in parts.items() if w not in down}
        if self._ray is not None:
            answered, failed = self._ray.request(command, parts)
            return answered, {**errors, **failed}
        call = next(self._calls)
        sent = []
        for w, payload in parts.items():
            try:
                self._conns[w].send((call, command, payload))
                sent.append(w)
            except (BrokenPipeError, ConnectionError, OSError):
                errors[w] = str(self._fail(w, f"died (exit code {self._procs[w].exitcode})"))
        results: dict[int, Any] = {}
        for w in sent:
            try:
                results.update(self._receive(w, call))
            except EnvPoolError as e:
                errors[w] = str(e)
        return results, errors

    def _dispatch(self, command: str, items: list[tuple], isolate: bool = False) -> dict[int, Any]:
        if self._closed:
            raise RuntimeError("EnvPool is closed")
        for item in items:
            if not 0 <= item[0] < self.num_envs:
                raise IndexError(f"environment index {item[0]} out of range (num_envs={self.num_envs})")
        results: dict[int, Any]
        if self.num_workers == 0:
            results = serve(self._local, command, items)
        else:
            by_worker: dict[int, list[tuple]] = {}
            for item in items:
                by_worker.setdefault(item[0] % self.num_workers, []).append(item)
            results, errors = self._request(command, by_worker)
            if errors and not isolate:
                raise EnvPoolError("\n".join(errors.values()))
            for w, why in errors.items():
                results.update({item[0]: EnvFailure(item[0], why) for item in by_worker[w]})
            if errors:
                self.restart()  # the next episode on those environments starts on a fresh worker
        failures = [r for r in results.values() if isinstance(r, EnvFailure)]
        if failures and not isolate:
            raise EnvPoolError("\n".join(f.cause for f in failures))
        return {item[0]: results[item[0]] for item in items}

    def _receive(self, w: int, call: int) -> Any:
        """The reply to ``call`` from worker ``w``: replies to earlier calls are dropped; death or
        silence past the timeout marks the worker down."""
        conn, proc = self._conns[w], self._procs[w]
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                raise self._fail(w, f"gave no answer within {self.timeout:g} s (stopped or hung); it was killed")
            try:
                ready = conn.poll(wait)
                message = conn.recv() if ready else None
            except (EOFError, OSError):
                proc.join(timeout=1)
                raise self._fail(w, self._died(proc, call)) from None
            if message is None:
                if not proc.is_alive():
                    raise self._fail(w, self._died(proc, call))
                continue
            got, status, payload = message
            if got != call:
                continue  # a late reply to a call that already failed: never hand it to this one
            if status == "error":
                if call == 0:  # could not even make its environments
                    self._down[w] = "failed to start"
                raise EnvPoolError(f"worker {w} raised:\n{payload}")
            return payload
