"""Shared fixtures. Everything runs offline on the CPU against the real engines and data.

Layout: one folder per package under test (envs/, skills/, services/, train/, miniature/) and the
project-wide checks at the top; within each, the end-to-end tests (several processes, servers, whole
runs) are marked ``slow`` (``make test-fast`` skips them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdar_envs.alfworld.data import list_tasks
from tests.helpers import launch_two_processes, run_args


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
