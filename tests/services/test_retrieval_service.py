"""sdar-retrieval over real HTTP on 127.0.0.1: the Search-R1 API, bad requests, concurrent clients,
and a killed service reported by the environment's client."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import gymnasium as gym
import pytest
import requests

from sdar_envs.searchqa.data import load_questions
from sdar_envs.searchqa.search import HttpSearcher, RetrievalServiceError
from servers.process import ServerProcess


def test_health_and_a_batch_of_100_queries(retrieval_service):
    retrieval_server, local_searcher = retrieval_service.server, retrieval_service.searcher
    health = requests.get(f"{retrieval_server.url}/health", timeout=5).json()
    assert health["status"] == "ok" and health["retriever"] == retrieval_service.retriever
    assert health["num_docs"] == retrieval_service.num_docs == (17825 if retrieval_service.retriever == "bm25" else 400)
    assert health["encoder"] == ("all-MiniLM-L6-v2" if retrieval_service.retriever == "dense" else None)
    questions = [r.question for r in load_questions(["nq"], "train")][:100]
    resp = requests.post(
        f"{retrieval_server.url}/retrieve", json={"queries": questions, "topk": 5, "return_scores": True}, timeout=30
    )
    assert resp.status_code == 200
    result = resp.json()["result"]
    assert len(result) == 100 and all(len(per) == 5 for per in result)
    first = result[0][0]
    assert set(first) == {"document", "score"} and set(first["document"]) == {"id", "contents"}
    expected = local_searcher.search(questions, 5)  # the same passages with the same scores as in-process
    assert [[d["document"]["id"] for d in per] for per in result] == [[p.id for p in per] for per in expected]
    got, want = [d["score"] for per in result for d in per], [p.score for per in expected for p in per]
    assert got == pytest.approx(want, rel=1e-5)
    # without scores: just the documents, as Search-R1's server answers
    plain = requests.post(
        f"{retrieval_server.url}/retrieve", json={"queries": questions[:2], "topk": 2}, timeout=10
    ).json()
    assert plain["result"][0] == [d["document"] for d in result[0][:2]]


BAD_REQUESTS = [
    ("missing queries", {"json": {"topk": 3}}, 400, "'queries' must be a non-empty list"),
    ("empty queries", {"json": {"queries": []}}, 400, "non-empty list"),
    ("queries not a list", {"json": {"queries": "who"}}, 400, "non-empty list"),
    ("query not a string", {"json": {"queries": ["a", 3]}}, 400, "queries[1] must be a string"),
    ("topk zero", {"json": {"queries": ["a"], "topk": 0}}, 400, "'topk' must be an integer in [1, 100]"),
    ("topk negative", {"json": {"queries": ["a"], "topk": -5}}, 400, "'topk'"),
    ("topk absurd", {"json": {"queries": ["a"], "topk": 10**9}}, 400, "'topk'"),
    ("topk a string", {"json": {"queries": ["a"], "topk": "3"}}, 400, "'topk'"),
    ("return_scores not bool", {"json": {"queries": ["a"], "return_scores": "yes"}}, 400, "'return_scores'"),
    ("unknown field", {"json": {"queries": ["a"], "k": 3}}, 400, "unknown field"),
    ("thousands of queries", {"json": {"queries": ["a"] * 5000}}, 413, "too many queries"),
    ("huge query", {"json": {"queries": ["a" * 10_000]}}, 413, "longer than"),
    ("not JSON", {"data": "{queries:", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
    ("not UTF-8", {"data": b"\xff\xfe{}", "headers": {"Content-Type": "application/json"}}, 400, "not UTF-8"),
    ("no content type", {"data": json.dumps({"queries": ["a"]})}, 415, "Content-Type: application/json"),
    ("a JSON list", {"json": ["a"]}, 400, "JSON object"),
    (
        "a huge body",
        {"data": b"[" + b"1," * 2_000_000 + b"1]", "headers": {"Content-Type": "application/json"}},
        413,
        "413",
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "status", "message"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_with_a_message(retrieval_service, name, kwargs, status, message):
    resp = requests.post(f"{retrieval_service.server.url}/retrieve", timeout=30, **kwargs)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]
    assert "Traceback" not in resp.text


def test_wrong_paths_and_methods_and_the_service_keeps_serving(retrieval_service):
    retrieval_server = retrieval_service.server
    assert requests.get(f"{retrieval_server.url}/retrieve", timeout=5).status_code == 405
    resp = requests.get(f"{retrieval_server.url}/<script>alert(1)</script>", timeout=5)
    assert resp.status_code == 404 and "<script>" not in resp.text
    assert requests.get(f"{retrieval_server.url}/health", timeout=5).json()["status"] == "ok"


def test_concurrent_clients_get_their_own_answers(retrieval_service):
    retrieval_server, local_searcher = retrieval_service.server, retrieval_service.searcher
    questions = [r.question for r in load_questions(["nq"], "test")][:64]
    expected = {q: [p.id for p in per] for q, per in zip(questions, local_searcher.search(questions, 3), strict=True)}

    def client(i: int) -> bool:
        http = HttpSearcher(retrieval_server.url)
        mine = questions[i::16]
        for _ in range(3):
            got = http.search(mine, 3)
            if [[p.id for p in per] for per in got] != [expected[q] for q in mine]:
                return False
        return True

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(client, range(16)))


def test_a_killed_service_is_a_typed_error_naming_the_url_and_a_restart_is_picked_up(searchqa_index, tmp_path):
    server = ServerProcess("servers.retrieval", ["--index", str(searchqa_index)], log=tmp_path / "r.log").start()
    env = gym.make("SDAR/SearchQA-v0", split="test", retrieval_url=server.url)
    env.reset(seed=0)
    obs, *_ = env.step("<search>capital of france</search>")
    assert obs.startswith("<information>")
    server.kill()
    env.reset(seed=0)
    with pytest.raises(RetrievalServiceError, match=f"retrieval service at {server.url}: unreachable"):
        env.step("<search>capital of france</search>")
    server.start()  # same port
    try:
        env.reset(seed=0)
        obs2, *_ = env.step("<search>capital of france</search>")
        assert obs2 == obs
    finally:
        server.stop()
