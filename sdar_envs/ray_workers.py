"""``EnvPool(..., backend="ray")``: the pool's workers as Ray actors, placed anywhere in a Ray cluster.

The contract is the process pool's: worker ``w`` holds environments ``w, w + W, ...``; a call goes to
the workers holding the environments it names and waits for all of them; an environment that raises
gives :class:`~sdar_envs.env_worker.EnvPoolError` with its traceback; a worker that dies or answers
nothing within ``timeout`` is killed, named, and down until :meth:`restart`. Ray's futures tie each
reply to its call, so no reply can be handed to another call.

``ray`` is an optional extra (``pip install 'sdar[ray]'``). Without a running cluster
(``address=None`` and no ``ray.init`` yet) a local instance is started.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdar_envs.env_worker import EnvPoolError, make_env, serve

__all__ = ["RayWorkers"]


class _EnvActor:
    """One Ray actor: the environments of one pool worker."""

    def __init__(self, env_id: Any, env_kwargs: Mapping[str, Any], indices: list[int]) -> None:
        self.envs = {i: make_env(env_id, env_kwargs) for i in indices}

    def serve(self, command: str, payload: Any) -> Any:
        return serve(self.envs, command, payload)

    def ready(self) -> bool:
        return True


class RayWorkers:
    """The actors of one pool and the calls to them."""

    def __init__(
        self,
        env_id: Any,
        env_kwargs: Mapping[str, Any],
        num_envs: int,
        num_workers: int,
        timeout: float | None,
        *,
        address: str | None = None,
        actor_options: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError("EnvPool(backend='ray') needs ray: pip install 'sdar[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
        self._ray = ray
        self._remote = ray.remote(_EnvActor).options(**{"num_cpus": 1, **dict(actor_options or {})})
        self.env_id, self.env_kwargs, self.num_envs, self.num_workers, self.timeout = (
            env_id, dict(env_kwargs), num_envs, num_workers, timeout
        )  # fmt: skip
        self.down: dict[int, str] = {}
        self.actors = [self._start(w) for w in range(num_workers)]
        try:  # every actor has made its environments (or says why not)
            self._ready({w: actor.ready.remote() for w, actor in enumerate(self.actors)})
        except EnvPoolError:
            self.close()
            raise

    def _start(self, w: int) -> Any:
        return self._remote.remote(self.env_id, self.env_kwargs, list(range(w, self.num_envs, self.num_workers)))

    def request(self, command: str, parts: dict[int, Any]) -> tuple[dict[int, Any], dict[int, str]]:
        """Each worker's answer to ``command``, by environment, and the workers that failed with why (the
        pool has left out those that are down)."""
        answers, errors = self._gather(
            {w: self.actors[w].serve.remote(command, payload) for w, payload in parts.items()}
        )
        results: dict[int, Any] = {}
        for answer in answers.values():
            results.update(answer)
        return results, errors

    def _gather(self, refs: dict[int, Any]) -> tuple[dict[int, Any], dict[int, str]]:
        """Every worker's answer, and the errors of those that failed; all are waited for (within the
        timeout)."""
        ray, exc = self._ray, self._ray.exceptions
        if not refs:
            return {}, {}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=self.timeout)
        answers, errors = {}, {}
        for w, ref in refs.items():
            envs = list(range(w, self.num_envs, self.num_workers))
            if ref not in ready:
                self._fail(w, f"gave no answer within {self.timeout:g} s (stopped or hung); it was killed")
                errors[w] = f"worker {w} (environments {envs}) gave no answer within {self.timeout:g} s; it was killed"
                continue
            try:
                answers[w] = ray.get(ref)
            except exc.RayActorError as e:
                self._fail(w, "died")
                errors[w] = (
                    f"worker {w} (environments {envs}) died ({type(e).__name__}); pool.restart() re-creates its environments"
                )
            except exc.RayTaskError as e:
                errors[w] = f"worker {w} raised:\n{e}"
        return answers, errors

    def _ready(self, workers: dict[int, Any]) -> None:
        """Wait until the given actors have made their environments; raise with every failure."""
        _, errors = self._gather(workers)
        if errors:
            raise EnvPoolError("\n".join(errors.values()))

    def _fail(self, w: int, why: str) -> None:
        self.down[w] = why
        try:
            self._ray.kill(self.actors[w])
        except Exception:
            pass

    def restart(self, w: int) -> None:
        self._fail(w, "restarting")
        self.actors[w] = self._start(w)
        self.down.pop(w, None)
        self._ready({w: self.actors[w].ready.remote()})

    def close(self) -> None:
        for actor in self.actors:
            try:
                self._ray.kill(actor)
            except Exception:
                pass
