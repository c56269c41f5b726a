"""What an LLM or a client can send: nothing raises in an env step, nothing answers 500, in-process and
HTTP back-ends apply one rule, and no text makes a step slow."""

from __future__ import annotations

import json
import random
import re

import gymnasium as gym
import pytest
import requests

from sdar_envs.core import extract_tag
from sdar_envs.lucene import lucene_query
from sdar_envs.searchqa.data import load_questions
from sdar_envs.searchqa.env import parse_action
from tests.helpers import ROOT

CJK_1100 = "".join(chr(0x4E00 + i) for i in range(1100))  # 1,100 distinct terms: over Lucene's 1,024 clauses


def _regex_extract(text: str, tag: str) -> str | None:  # the former implementation: quadratic, same answers
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL | re.IGNORECASE)
    return found[-1].strip() if found else None


def _regex_parse(text: str) -> tuple[str, str] | None:
    outside = re.sub(r"<think>.*?</think>", " ", text, flags=re.DOTALL | re.IGNORECASE)
    m = re.search(r"<(search|answer)>(.*?)</\1>", outside, flags=re.DOTALL | re.IGNORECASE)
    if m is None:
        return None
    content = " ".join(m.group(2).split())
    return (m.group(1).lower(), content) if content else None


def test_linear_tag_parsers_answer_as_the_regexes_did():
    rng = random.Random(0)
    pieces = [
        "<action>",
        "</action>",
        "<ACTION>",
        "</Action>",
        "<think>",
        "</think>",
        "<search>",
        "</search>",
        "<answer>",
        "</ANSWER>",
        "x",
        " go ",
        "\n",
        "<",
        ">",
        "/",
    ]
    for _ in range(20000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert extract_tag(text, "action") == _regex_extract(text, "action"), text
        assert parse_action(text) == _regex_parse(text), text


@pytest.mark.parametrize("env_id", ["SDAR/ALFWorld-v0", "SDAR/WebShop-v0", "SDAR/SearchQA-v0"])
def test_pathological_outputs_are_invalid_steps(env_id, local_searcher):
    kwargs = {
        "SDAR/ALFWorld-v0": {"split": "valid_seen"},
        "SDAR/WebShop-v0": {"split": "test"},
        "SDAR/SearchQA-v0": {"split": "test", "searcher": local_searcher},
    }[env_id]
    env = gym.make(env_id, **kwargs)
    env.reset(seed=0)
    for text in ("<action>" * 20000 + "</action", "<think>" * 20000 + "</think", "<search>" * 20000, "\ud800" * 10):
        *_, info = env.step(text)
        assert info["admissible"] is False and info["format_valid"] is False


def test_any_search_text_is_a_valid_search_in_process_and_over_http(local_searcher, retrieval_server):
    from sdar_envs.searchqa.search import HttpSearcher

    http = HttpSearcher(retrieval_server.url)
    for query in (CJK_1100[:2000], "caf\ud800e au lait", "a " * 1500):
        assert http.search([query[:2048]], 3) == local_searcher.search([query[:2048]], 3)
    assert len(lucene_query(CJK_1100)) == 512 and lucene_query("x\ud800y") == "xy"
    task = load_questions(["nq"], "test")[3].id
    long = "<search>" + "who wrote hamlet " * 200 + "</search>"  # 3,400 characters: over the service's 2,048
    results = []
    for env in (
        gym.make("SDAR/SearchQA-v0", split="test", searcher=local_searcher),
        gym.make("SDAR/SearchQA-v0", split="test", retrieval_url=retrieval_server.url),
    ):
        env.reset(options={"task_id": task})
        steps = [
            env.step(f"<search>{CJK_1100}</search>"),
            env.step("<search>lone \ud800 surrogate</search>"),
            env.step(long),
        ]
        assert all(info["admissible"] for *_, info in steps)
        results.append([obs for obs, *_ in steps])
    assert results[0] == results[1]


def test_webshop_searches_follow_one_length_rule_on_both_back_ends(webshop_server):
    outcomes = []
    for kwargs in ({}, {"webshop_url": webshop_server.url}):
        env = gym.make("SDAR/WebShop-v0", split="test", **kwargs)
        env.reset(options={"task_id": "synthetic-0"})
        *_, too_long = env.step("search[" + "pillow " * 86 + "]")  # 602 characters
        *_, cjk = env.step(f"search[{CJK_1100[:480]}]")
        outcomes.append((too_long["admissible"], cjk["admissible"]))
    assert outcomes == [(False, True), (False, True)]


@pytest.mark.parametrize(
    ("path", "status"), [("/fixed_%C2%B2", 404), ("/fixed_0/results?q=shoes&page=%C2%B2", 400), ("/fixed_%D9%A3", 404)]
)
def test_webshop_unicode_digits_are_4xx(webshop_server, path, status):
    assert requests.get(webshop_server.url + path, timeout=10).status_code == status


def test_no_static_route_and_static_is_a_session_id(webshop_server, retrieval_server):
    page = requests.get(f"{webshop_server.url}/static", timeout=10)
    assert page.status_code == 200 and "Search" in page.text
    assert requests.get(f"{webshop_server.url}/static/app.py", timeout=10).status_code == 404
    assert requests.get(f"{retrieval_server.url}/static/app.py", timeout=10).status_code == 404
    health = requests.get(f"{retrieval_server.url}/health", timeout=10).json()
    assert "/" not in health["index"] and health["index"]


def test_retrieval_serves_or_refuses_hostile_bodies_without_500(retrieval_server):
    url = f"{retrieval_server.url}/retrieve"
    huge = requests.post(url, json={"queries": [CJK_1100] + ["who wrote hamlet"] * 99}, timeout=30)
    assert huge.status_code == 200 and len(huge.json()["result"]) == 100 and huge.json()["result"][1]
    lone = requests.post(
        url, data='{"queries": ["\\ud800", "\\ud800 hamlet"]}', headers={"Content-Type": "application/json"}, timeout=10
    )
    assert lone.status_code == 200
    deep = requests.post(url, data="[" * 1000 + "]" * 1000, headers={"Content-Type": "application/json"}, timeout=10)
    assert deep.status_code == 400 and "error" in deep.json()
    nested = requests.post(
        url,
        data=json.dumps({"queries": ["a"], "topk": 3})[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}",
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert 400 <= nested.status_code < 500


def test_async_vector_envs_after_the_parent_used_lucene_fail_fast_or_work_with_spawn(local_searcher):
    """The parent's JVM is up (local_searcher). Forked workers cannot use it: they say so at once instead
    of hanging; spawned workers start their own and work."""
    local_searcher.search(["warm up"], 1)
    forked = gym.make_vec(
        "SDAR/SearchQA-v0", num_envs=2, vectorization_mode="async", vector_kwargs={"shared_memory": False}, split="test"
    )
    try:
        forked.reset(seed=[0, 1])
        with pytest.raises(Exception, match="does not survive a fork"):
            forked.step(["<search>hamlet</search>"] * 2)
    finally:
        forked.close(terminate=True)
    spawned = gym.make_vec(
        "SDAR/SearchQA-v0",
        num_envs=2,
        vectorization_mode="async",
        vector_kwargs={"shared_memory": False, "context": "spawn"},
        split="test",
    )
    try:
        spawned.reset(seed=[0, 1])
        _, _, _, _, info = spawned.step(["<search>hamlet</search>"] * 2)
        assert list(info["admissible"]) == [True, True]
    finally:
        spawned.close()


_SEARCH_THEN_COMPUTE = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as under a terminal, even if started in the background
import torch
from sdar_envs.lucene import BM25Searcher
assert BM25Searcher(sys.argv[1]).search("hamlet", 1)
x = torch.randn(128, 128)
try:
    print("searched", flush=True)  # inside the try: the signal may come the moment this is read
    deadline = time.time() + 120
    while time.time() < deadline:  # a training step's kind of work, on the main thread
        (x @ x).transpose(0, 1).contiguous()
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.exit(3)
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_stop_a_process_that_searched_like_any_python_process(searchqa_index, tmp_path, sig):
    """Once Lucene's JVM is up, Ctrl-C is still a KeyboardInterrupt and SIGTERM still terminates: the JVM
    must not take those signals over (it would call System.exit beside the running main thread: a JVM
    crash with an hs_err_pid*.log, torch's "unknown parameter type", or a hang)."""
    import os
    import select
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SEARCH_THEN_COMPUTE, str(searchqa_index)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)  # a JVM that never starts fails, not hangs
        assert ready and proc.stdout.readline().strip() == "searched"
        proc.send_signal(getattr(signal, sig))
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    if sig == "SIGINT":
        assert (proc.returncode, out.strip()) == (3, "KeyboardInterrupt"), out[-2000:]
    else:
        assert proc.returncode == -signal.SIGTERM, out[-2000:]
    assert not list(tmp_path.glob("hs_err_pid*.log"))


_JVM_STARTED_ELSEWHERE = """
import os, warnings
from sdar_envs import lucene
os.environ["JAVA_HOME"] = lucene.java_home()
import jnius  # another library starts the JVM first, without -Xrs
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    lucene._start_jvm()
print(*(str(w.message) for w in caught if w.category is RuntimeWarning), sep="\\n")
"""


def test_a_jvm_started_elsewhere_without_xrs_is_reported():
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _JVM_STARTED_ELSEWHERE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "started before sdar_envs.lucene could give it -Xrs" in out.stdout
