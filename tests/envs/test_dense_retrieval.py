"""Dense retrieval (sdar_envs.dense): what it finds, the index a build leaves (Pyserini's FAISS layout),
a build that resumes after a real kill, Search-QA on it, and one-line errors for what users get wrong."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from sdar_envs.dense import DenseIndex, DenseIndexError, EncoderSpec, build_dense_index
from sdar_envs.searchqa.data import CORPUS_PATH
from sdar_envs.searchqa.search import DenseSearcher, make_searcher
from tests.helpers import ROOT


def _passages(n: int) -> list[dict]:
    with gzip.open(CORPUS_PATH, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in islice(f, n)]


def test_a_passage_is_found_by_its_title_and_scores_are_cosines(dense_searcher):
    docs = _passages(400)[::20]
    titles = [d["contents"].split("\n", 1)[0].strip('"') for d in docs]
    hits = dense_searcher.search(titles, 3)
    assert sum(per[0].id == d["id"] for per, d in zip(hits, docs, strict=True)) >= 0.9 * len(docs)
    scores = [p.score for per in hits for p in per]
    assert all(-1.0001 <= s <= 1.0001 for s in scores)  # unit vectors: inner product = cosine
    assert all(per[0].score >= per[1].score >= per[2].score for per in hits)
    assert dense_searcher.search([], 3) == []


def test_the_index_is_pyserinis_faiss_layout(dense_index):
    import faiss

    index = faiss.read_index(str(dense_index / "index"))
    docids = (dense_index / "docid").read_text().splitlines()
    assert isinstance(index, faiss.IndexFlatIP) and index.ntotal == len(docids) == 400
    assert docids[:3] == [d["id"] for d in _passages(3)]
    info = json.loads((dense_index / "encoder.json").read_text())
    assert info["encoder"] == "all-MiniLM-L6-v2" and info["dim"] == index.d == 384 and info["normalized"]
    vectors = index.reconstruct_n(0, 5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_searchqa_searches_the_dense_index_in_process(dense_index, dense_searcher):
    env = gym.make("SDAR/SearchQA-v0", split="test", retriever="dense", index_dir=str(dense_index))
    env.reset(seed=0)
    query = _passages(1)[0]["contents"].split("\n", 1)[0]
    obs, reward, terminated, truncated, info = env.step(f"<think>look it up</think><search>{query}</search>")
    assert obs.startswith("<information>") and info["admissible"] and info["format_valid"] and not terminated
    assert dense_searcher.search([query], 3)[0][0].title in obs
    with pytest.raises(ValueError, match="retriever must be one of"):
        gym.make("SDAR/SearchQA-v0", retriever="sparse")


def test_e5_gets_its_prefixes_and_other_encoders_none():
    assert EncoderSpec.for_name("intfloat/e5-base-v2").query_prefix == "query: "
    assert EncoderSpec.for_name("/models/multilingual-e5-small").passage_prefix == "passage: "
    assert EncoderSpec.for_name("all-MiniLM-L6-v2") == EncoderSpec("all-MiniLM-L6-v2")
    assert EncoderSpec.for_name("BAAI/bge-small-en-v1.5").query_prefix == ""


def test_what_users_get_wrong_is_one_clear_error(dense_index, tmp_path):
    with pytest.raises(DenseIndexError, match="no dense index at .*sdar-retrieval-index --dense"):
        DenseSearcher(tmp_path / "nothing")
    with pytest.raises(DenseIndexError, match="built with the encoder 'all-MiniLM-L6-v2', not 'intfloat/e5-base-v2'"):
        DenseIndex(dense_index, encoder="intfloat/e5-base-v2")
    assert DenseIndex(dense_index, encoder="minilm").num_docs == 400  # another name of the same encoder
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "contents": "fine"}\n{"id": "b"}\n')
    with pytest.raises(DenseIndexError, match=r"bad.jsonl:2: not a \{\"id\", \"contents\"\} JSON line"):
        build_dense_index(bad, tmp_path / "idx", progress=False)
    with pytest.raises(DenseIndexError, match="already holds an index"):
        build_dense_index(bad, dense_index, progress=False)
    with pytest.raises(ValueError, match="retriever must be one of"):
        make_searcher(retriever="sparse")  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_service_refuses_an_index_of_the_other_kind(dense_index, searchqa_index):
    def serve(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "servers.retrieval", "--port", "0", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)

    done = serve("--retriever", "dense", "--index", str(searchqa_index))
    assert done.returncode == 2 and "is not a dense index" in done.stderr
    done = serve("--index", str(dense_index))
    assert done.returncode == 2 and "is a dense index: pass --retriever dense" in done.stderr


@pytest.mark.slow
def test_a_killed_build_resumes_from_its_last_whole_shard(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in _passages(120)))
    index = tmp_path / "idx"
    cmd = [
        sys.executable,
        "-c",
        "from servers.retrieval.cli import index_main; raise SystemExit(index_main())",
        "--dense",
        "--corpus",
        str(corpus),
        "--index",
        str(index),
        "--shard-size",
        "20",
        "--batch-size",
        "4",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = tmp_path / "idx.partial" / "shards"
    deadline = time.time() + 300
    while len(list(shards.glob("0*.npy"))) < 2 and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in shards.glob("0*.npy")}
    assert 2 <= len(kept) < 6 and not (index / "index").exists()  # killed mid-build, nothing half-written in place
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{20 * len(kept)}/120" in done.stderr  # the progress bar starts after the shards it kept
    assert not (tmp_path / "idx.partial").exists()
    fresh = build_dense_index(corpus, tmp_path / "fresh", shard_size=20, batch_size=4, progress=False)
    resumed, whole = DenseIndex(index), DenseIndex(fresh)
    assert resumed.docids == whole.docids and resumed.num_docs == 120
    assert np.allclose(resumed.index.reconstruct_n(0, 120), whole.index.reconstruct_n(0, 120), atol=1e-5)
    assert Path(index / "docs.jsonl").read_bytes() == Path(fresh / "docs.jsonl").read_bytes()
