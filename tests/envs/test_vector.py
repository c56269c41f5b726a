"""EnvPool: groups of environments in worker processes, stepped by subset."""

from __future__ import annotations

import pytest

from sdar_envs import EnvPool, EnvPoolError

ENV_ID = "SDAR/ALFWorld-v0"
KW = {"split": "valid_seen", "expert": "walkthrough"}


def _rollout(pool: EnvPool, task_ids: list[str]) -> dict[int, list[tuple]]:
    """Play the expert in every environment until each is done, stepping only the live ones."""
    out = pool.reset(options=[{"task_id": t} for t in task_ids])
    traces = {i: [(obs, info["task_id"])] for i, (obs, info) in out.items()}
    infos = {i: info for i, (_, info) in out.items()}
    live = set(out)
    while live:
        results = pool.step({i: f"<action>{infos[i]['expert_action']}</action>" for i in sorted(live)})
        assert set(results) == live  # finished environments are not stepped
        for i, (obs, reward, terminated, truncated, info) in results.items():
            traces[i].append((obs, reward))
            infos[i] = info
            if terminated or truncated:
                live.discard(i)
    return traces


def test_groups_in_workers_match_in_process(valid_seen_tasks):
    # 2 tasks x G=3, spread over 2 worker processes: each group sees one task, and the workers
    # produce exactly what in-process environments produce.
    task_ids = [valid_seen_tasks[3].task_id] * 3 + [valid_seen_tasks[60].task_id] * 3
    with EnvPool(ENV_ID, 6, num_workers=2, env_kwargs=KW) as pool:
        remote = _rollout(pool, task_ids)
    with EnvPool(ENV_ID, 6, num_workers=0, env_kwargs=KW) as pool:
        local = _rollout(pool, task_ids)
    assert remote == local
    assert remote[0] == remote[1] == remote[2] and remote[3] == remote[4] == remote[5]
    assert remote[0] != remote[3]
    assert all(trace[-1][1] == 1.0 for trace in remote.values())


def test_worker_errors_surface_with_their_traceback():
    with EnvPool(ENV_ID, 2, num_workers=1, env_kwargs=KW) as pool:
        with pytest.raises(EnvPoolError, match="unknown ALFWorld task_id"):
            pool.reset([0], options=[{"task_id": "nope"}])
        # The pool keeps working after an environment raised.
        assert pool.reset([1], seeds=[0])[1][1]["step"] == 0
        with pytest.raises(IndexError):
            pool.step({5: "look"})


def test_bad_sizes_rejected():
    with pytest.raises(ValueError):
        EnvPool(ENV_ID, 0)


def test_gymnasium_make_vec_works_without_shared_memory():
    import gymnasium as gym

    # Gymnasium's shared-memory buffers do not carry free text faithfully; pass shared_memory=False.
    for mode, kwargs in (("sync", {}), ("async", {"shared_memory": False})):
        vec = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode=mode, vector_kwargs=kwargs, split="valid_seen")
        try:
            obs, info = vec.reset(seed=[0, 1])
            assert all(o.startswith("-= Welcome to TextWorld, ALFRED! =-") for o in obs), mode
            obs, reward, terminated, truncated, info = vec.step(("<action>look</action>", "garbage"))
            assert list(info["valid_action"]) == [True, False], mode
        finally:
            vec.close()


def _first_obs(task_id: str) -> str:
    import gymnasium as gym

    return gym.make(ENV_ID, **KW).reset(options={"task_id": task_id})[0]


def test_a_killed_worker_is_named_and_never_yields_another_calls_reply(valid_seen_tasks):
    import os
    import signal

    a, b = valid_seen_tasks[3].task_id, valid_seen_tasks[60].task_id
    with EnvPool(ENV_ID, 4, num_workers=2, env_kwargs=KW, timeout=60) as pool:
        pool.reset(options=[{"task_id": a}] * 4)
        os.kill(pool._procs[1].pid, signal.SIGKILL)
        with pytest.raises(EnvPoolError, match=r"worker 1 \(environments \[1, 3\]\) died"):
            pool.step({0: "<action>look</action>", 1: "<action>look</action>"})
        # worker 0 answered that failed call; its reply must not be handed to the next one
        assert pool.reset([0], options=[{"task_id": b}])[0][0] == _first_obs(b)
        with pytest.raises(EnvPoolError, match="worker 1 is down"):
            pool.step({3: "<action>look</action>"})
        assert set(pool.down_workers) == {1}
        pool.restart()
        assert pool.down_workers == {} and pool.reset([3], options=[{"task_id": a}])[3][0] == _first_obs(a)


def test_a_stopped_worker_times_out_instead_of_hanging(valid_seen_tasks):
    import os
    import signal
    import time

    # 10 s, not less: on a loaded machine the live worker's own step once took over 3 s
    with EnvPool(ENV_ID, 2, num_workers=2, env_kwargs=KW, timeout=10) as pool:
        pool.reset(options=[{"task_id": valid_seen_tasks[0].task_id}] * 2)
        os.kill(pool._procs[1].pid, signal.SIGSTOP)
        t = time.monotonic()
        with pytest.raises(EnvPoolError, match="worker 1 .* gave no answer within 10 s"):
            pool.step({0: "<action>look</action>", 1: "<action>look</action>"})
        assert time.monotonic() - t < 30 and not pool._procs[1].is_alive()
        assert (
            pool.step({0: "<action>look</action>"})[0][4]["step"] == 2
        )  # the live worker carries on (it took the first step too)
    assert not pool._procs[0].is_alive()  # closed cleanly


def test_a_failed_reset_leaves_the_env_needing_a_reset(valid_seen_tasks):
    import gymnasium as gym

    env = gym.make(ENV_ID, **KW)
    env.reset(options={"task_id": valid_seen_tasks[0].task_id})
    with pytest.raises(ValueError):
        env.reset(options={"task_id": "nope"})
    with pytest.raises(gym.error.ResetNeeded):
        env.step("<action>look</action>")


def test_isolated_failures_cost_only_their_environments_and_the_pool_heals():
    """An environment that raises answers an EnvFailure with its traceback; one whose worker dies takes
    that worker's other environments of the call with it; the dead worker is restarted before the call
    returns, and without ``isolate`` the same failures raise as before."""
    from functools import partial

    from sdar_envs import EnvFailure
    from tests.train.toy_env import FlakyLetterEnv

    with EnvPool(partial(FlakyLetterEnv, raise_on=1, die_on=2), 4, num_workers=2, timeout=60) as pool:
        # env i plays letter-i; worker 0 holds envs 0 and 2, worker 1 holds envs 1 and 3
        pool.reset(options=[{"task_id": f"letter-{i}"} for i in range(4)])
        out = pool.step({i: "yes" for i in range(4)}, isolate=True)
        assert isinstance(out[1], EnvFailure) and "injected" in out[1].cause and "ConnectionError" in out[1].summary
        assert isinstance(out[2], EnvFailure) and "died (exit code 137)" in out[2].cause
        assert isinstance(out[0], EnvFailure) and out[0].cause == out[2].cause  # same worker, same fate
        assert out[3][1] == 1.0 and out[3][2]  # the healthy neighbour of the raising env answered
        assert pool.down_workers == {}  # restarted before the call returned
        pool.reset(options=[{"task_id": "letter-0"}] * 4)
        assert all(r[1] == 1.0 for r in pool.step({i: "yes" for i in range(4)}).values())
        pool.reset(options=[{"task_id": f"letter-{i}"} for i in range(4)])
        with pytest.raises(EnvPoolError, match="injected"):
            pool.step({1: "yes"})


def test_a_failed_reset_is_an_env_failure_in_process_too():
    from sdar_envs import EnvFailure

    with EnvPool(ENV_ID, 2, num_workers=0, env_kwargs=KW) as pool:
        out = pool.reset(options=[{"task_id": "no-such-game"}, None], isolate=True)
        assert isinstance(out[0], EnvFailure) and "unknown ALFWorld task_id" in out[0].cause
        obs, info = out[1]
        assert info["task_id"]
