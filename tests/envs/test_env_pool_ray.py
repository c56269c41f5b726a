"""EnvPool(backend="ray"): the same contract on Ray actors, on a local Ray instance started here."""

from __future__ import annotations

import pytest

from sdar_envs import EnvPool, EnvPoolError
from tests.envs.test_vector import ENV_ID, KW, _rollout

ray = pytest.importorskip("ray", reason="ray is an optional extra (pip install 'sdar[ray]')")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_ray_workers_give_what_the_process_pool_gives(local_ray, valid_seen_tasks):
    task_ids = [valid_seen_tasks[3].task_id] * 2 + [valid_seen_tasks[60].task_id] * 2
    with EnvPool(ENV_ID, 4, num_workers=2, env_kwargs=KW, backend="ray", ray_actor_options={"num_cpus": 0.5}) as pool:
        on_ray = _rollout(pool, task_ids)
        with pytest.raises(EnvPoolError, match="unknown ALFWorld task_id"):  # an env's error, with its traceback
            pool.reset([0], options=[{"task_id": "nope"}])
    with EnvPool(ENV_ID, 4, num_workers=2, env_kwargs=KW) as pool:
        in_processes = _rollout(pool, task_ids)
    assert on_ray == in_processes and all(trace[-1][1] == 1.0 for trace in on_ray.values())


def test_a_killed_ray_worker_is_named_and_can_be_restarted(local_ray, valid_seen_tasks):
    task = valid_seen_tasks[0].task_id
    with EnvPool(
        ENV_ID, 2, num_workers=2, env_kwargs=KW, backend="ray", ray_actor_options={"num_cpus": 0.5}, timeout=60
    ) as pool:
        pool.reset(options=[{"task_id": task}] * 2)
        ray.kill(pool._ray.actors[1])
        with pytest.raises(EnvPoolError, match=r"worker 1 \(environments \[1\]\) died"):
            pool.step({0: "<action>look</action>", 1: "<action>look</action>"})
        with pytest.raises(EnvPoolError, match="worker 1 is down"):
            pool.step({1: "<action>look</action>"})
        pool.restart()
        assert pool.down_workers == {} and pool.reset([1], options=[{"task_id": task}])[1][1]["task_id"] == task
