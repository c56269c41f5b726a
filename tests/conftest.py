"""Shared fixtures. Everything runs offline on the CPU against the real engines and data."""

from __future__ import annotations

import pytest

from sdar_envs.alfworld.data import TASK_TYPES, list_tasks


def sample_per_type(split: str, per_type: int) -> list:
    """The first ``per_type`` games of each task type: a fixed, type-balanced sample."""
    tasks = list_tasks(split)
    out = []
    for task_type in TASK_TYPES:
        out += [t for t in tasks if t.task_type == task_type][:per_type]
    return out


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
    """A real ``sdar-retrieval`` process (gunicorn, 2 workers) on a free port of 127.0.0.1."""
    from servers.process import ServerProcess

    log = tmp_path_factory.mktemp("logs") / "retrieval.log"
    server = ServerProcess(
        "servers.retrieval", ["--index", str(searchqa_index), "--workers", "2", "--threads", "8", "--max-queries", "256"], log=log
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def webshop_server(tmp_path_factory):
    """A real ``sdar-webshop`` process (gunicorn, 2 workers) on a free port of 127.0.0.1."""
    from servers.process import ServerProcess

    log = tmp_path_factory.mktemp("logs") / "webshop.log"
    server = ServerProcess("servers.webshop", ["--workers", "2", "--threads", "16"], log=log).start()
    yield server
    server.stop()
