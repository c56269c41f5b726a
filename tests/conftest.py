"""Shared fixtures. Everything runs offline on the CPU against the real engines and data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdar_envs.alfworld.data import TASK_TYPES, list_tasks


def sample_per_type(split: str, per_type: int) -> list:
    """The first ``per_type`` games of each task type: a fixed, type-balanced sample."""
    tasks = list_tasks(split)
    out = []
    for task_type in TASK_TYPES:
        out += [t for t in tasks if t.task_type == task_type][:per_type]
    return out


SMALL_RUN = {
    "env": "SDAR/SearchQA-v0", "env_kwargs": "{split: test}", "model": "tiny", "steps": "2", "tasks_per_step": "2",
    "group_size": "2", "max_turns": "2", "max_response_tokens": "8", "max_prompt_tokens": "512",
    "max_teacher_prompt_tokens": "768", "progress": "false",
}  # fmt: skip


def run_args(**fields: object) -> list[str]:
    """``python -m sdar_train`` arguments for a small Search-QA run with the tiny model; ``fields``
    override or add (``--field value``)."""
    merged = {**SMALL_RUN, **{k: str(v) for k, v in fields.items()}}
    return [item for k, v in merged.items() for item in (f"--{k}", v)]


def launch_two_processes(
    module_args: list[str], *, cpu: bool = True, flags: tuple[str, ...] = ("--multi_gpu",), timeout: int = 600
) -> subprocess.CompletedProcess:
    """``accelerate launch --num_processes 2 <flags>`` of ``python -m <module_args>`` from the repository
    root. ``cpu``: DDP over gloo, which needs ``--multi_gpu`` plus ``ACCELERATE_USE_CPU`` (``--cpu
    --num_processes 2``, as people type it, starts one process)."""
    from servers.process import free_port

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), **({"ACCELERATE_USE_CPU": "true"} if cpu else {})}
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launcher = [accelerate, "launch", *flags, "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launcher += ["--dynamo_backend", "no", "--main_process_port", str(free_port())]
    return subprocess.run(
        [*launcher, "-m", *module_args], env=env, cwd=root, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def valid_seen_tasks() -> list:
    return list_tasks("valid_seen")


@pytest.fixture(scope="session")
def searchqa_index():
    """The shipped Search-QA corpus indexed with Lucene (cached under $SDAR_CACHE_DIR)."""
    from sdar_envs.lucene import cached_index
    from sdar_envs.searchqa.data import CORPUS_PATH

    return cached_index(CORPUS_PATH, "searchqa")


@pytest.fixture(scope="session")
def local_searcher(searchqa_index):
    from sdar_envs.searchqa.search import LocalSearcher

    return LocalSearcher(searchqa_index)


@pytest.fixture(scope="session")
def retrieval_server(searchqa_index, tmp_path_factory):
    """A real ``sdar-retrieval`` process (2 workers) on a free port of 127.0.0.1."""
    from servers.process import ServerProcess

    log = tmp_path_factory.mktemp("logs") / "retrieval.log"
    server = ServerProcess(
        "servers.retrieval",
        ["--index", str(searchqa_index), "--workers", "2", "--threads", "8", "--max-queries", "256"],
        log=log,
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def webshop_server(tmp_path_factory):
    """A real ``sdar-webshop`` process (2 workers) on a free port of 127.0.0.1."""
    from servers.process import ServerProcess

    log = tmp_path_factory.mktemp("logs") / "webshop.log"
    server = ServerProcess("servers.webshop", ["--workers", "2", "--threads", "16"], log=log).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory):
    """``ddp_run(**fields)``: the output folder of a small two-process DDP run (``run_args(**fields)``),
    launched once per test session for each set of fields: the FSDP and DeepSpeed tests compare against
    the same reference runs."""
    import json

    done: dict[str, Path] = {}

    def run(**fields: object) -> Path:
        key = json.dumps(fields, sort_keys=True, default=str)
        if key not in done:
            out = tmp_path_factory.mktemp("ddp") / "ddp"
            proc = launch_two_processes(["sdar_train", *run_args(**fields, output_dir=out)])
            assert proc.returncode == 0, proc.stderr[-3000:]
            done[key] = out
        return done[key]

    return run
