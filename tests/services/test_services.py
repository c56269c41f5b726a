"""Operating the services: sdar-serve, compose, load, malformed input and faults, over real HTTP."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gymnasium as gym
import pytest
import requests
import yaml

from sdar_envs.searchqa.data import load_questions
from sdar_envs.searchqa.search import HttpSearcher
from sdar_envs.webshop.catalog import load_catalog
from sdar_envs.webshop.client import WebShopServiceError
from sdar_envs.webshop.reward import score_purchase, target_options
from servers.process import ServerProcess, free_port
from tests.helpers import ROOT


def _start_sdar_serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """``sdar-serve <args>`` as a process, once it says its services are healthy (or has exited)."""
    cmd = [sys.executable, "-m", "servers.serve", *args, "--log-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines: list[str] = []
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        lines.append(proc.stdout.readline())
        if "Ctrl-C stops them" in lines[-1]:
            break
    return proc, "".join(lines)


@pytest.mark.slow
def test_sdar_serve_starts_both_waits_for_health_and_stops_on_ctrl_c(tmp_path):
    ports = free_port(), free_port()
    proc, out = _start_sdar_serve(
        tmp_path, "--webshop-port", str(ports[0]), "--retrieval-port", str(ports[1]), "--workers", "1"
    )
    assert f"export SDAR_WEBSHOP_URL=http://127.0.0.1:{ports[0]}" in out, out
    assert requests.get(f"http://127.0.0.1:{ports[0]}/health", timeout=5).json()["status"] == "ok"
    assert requests.get(f"http://127.0.0.1:{ports[1]}/health", timeout=5).json()["status"] == "ok"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped webshop" in out and "stopped retrieval" in out
    for port in ports:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_compose_file_passes_docker_compose_config():
    """``docker compose config`` (the plugin) or Debian's ``docker-compose`` (1.29, which .ci/run installs
    where it can): the file parses, and both services with their health checks are in it."""
    docker, legacy = shutil.which("docker"), shutil.which("docker-compose")
    if docker is not None and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        cmd = [docker, "compose", "config"]
    elif legacy is not None:
        cmd = [legacy, "config"]
    else:
        pytest.skip(
            "neither docker compose nor docker-compose is installed here; the file's content is checked by test_packaging"
        )
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert {"webshop", "retrieval"} <= set(services)
    assert all("healthcheck" in services[s] for s in ("webshop", "retrieval"))


@pytest.mark.slow
def test_load_64_webshop_sessions_and_16_retrieval_clients_at_once(webshop_server, retrieval_service):
    retrieval_server, local_searcher = retrieval_service.server, retrieval_service.searcher
    questions = [r.question for r in load_questions(["nq"], "test")][:32]
    expected = [[p.id for p in per] for per in local_searcher.search(questions, 3)]

    def shopper(i: int) -> tuple[str, float]:
        env = gym.make("SDAR/WebShop-v0", split="test", webshop_url=webshop_server.url)
        obs, info = env.reset(options={"task_id": f"synthetic-{i}"})
        assert env.unwrapped.goals[i].instruction in obs  # my own goal, nobody else's
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(info["expert_action"])
            done = terminated or truncated
        return info["task_id"], reward

    def searcher(i: int) -> bool:
        http = HttpSearcher(retrieval_server.url)
        return all(
            [[p.id for p in per] for per in http.search(questions[i::16], 3)] == expected[i::16] for _ in range(5)
        )

    with ThreadPoolExecutor(80) as pool:
        shops = pool.map(shopper, range(64))
        searches = pool.map(searcher, range(16))
        shops, searches = list(shops), list(searches)
    catalog = load_catalog()  # the expert buys its target: what master's reward gives that (a few goals < 1)
    wanted = [
        score_purchase(catalog.by_asin[g.asin], g, target_options(g, catalog.by_asin[g.asin])).score
        for g in catalog.goals("synthetic", "test")[:64]
    ]
    assert shops == [(f"synthetic-{i}", wanted[i]) for i in range(64)] and wanted.count(1.0) >= 60
    assert all(searches)


FUZZ_PATHS = [
    "/%00",
    "/..%2f..%2fetc%2fpasswd",
    "/fixed_0/results?q=%ff%fe&page=1",
    "/fixed_0/results?q=x&page=1e9",
    "/fixed_0/results?q=x&page=" + "9" * 50,
    "/fixed_0/item/B0743JKHBV?q=x&page=1&opt=%00:%00",
    "/fixed_0/item/" + "A" * 5000,
    "/" + "x" * 3000,
    "/fixed_0/done/B0743JKHBV?opt=size:" + "%22" * 100,
    "/fixed_0/item/B0743JKHBV/description?q=<img src=x onerror=alert(1)>&page=1",
    "/fixed_0?goals=%3Cb%3E",
]


@pytest.mark.parametrize("path", FUZZ_PATHS)
def test_webshop_fuzzed_urls_get_4xx_and_no_reflected_html(webshop_server, path):
    resp = requests.get(webshop_server.url + path, timeout=10)
    assert resp.status_code < 500, (path, resp.status_code)
    assert (
        "Traceback" not in resp.text
        and "<img src=x" not in resp.text
        and "<b>" not in resp.text.replace("<b>Instruction:</b>", "")
    )


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Content-Type": "application/json"}, b"null"),
        ({"Content-Type": "application/json"}, b'{"queries": ["a"], "topk": 1.5}'),
        ({"Content-Type": "application/json"}, b'{"queries": [null]}'),
        ({"Content-Type": "application/json"}, b'{"queries": ["a"], "topk": true}'),
        ({"Content-Type": "application/json"}, b'{"queries": [["nested"]]}'),
        ({"Content-Type": "application/json"}, b"\x00\x01\x02"),
        ({"Content-Type": "application/json; charset=latin-1"}, '{"queries": ["\u00e9"]}'.encode("latin-1")),
        ({"Content-Type": "text/html"}, b"<script>alert(1)</script>"),
        ({"Content-Type": "application/json", "Content-Length": "5"}, b"{}"),
        ({"Content-Type": "application/json"}, b'{"queries": ["<script>alert(1)</script>"], "topk": 0}'),
    ],
)
def test_retrieval_fuzzed_bodies_and_headers_get_4xx_with_a_message(retrieval_service, headers, body):
    retrieval_server = retrieval_service.server
    try:
        resp = requests.post(f"{retrieval_server.url}/retrieve", data=body, headers=headers, timeout=10)
    except requests.ConnectionError:  # a lying Content-Length may make the server close the connection: fine, no 500
        return
    assert 400 <= resp.status_code < 500, (body, resp.status_code, resp.text[:200])
    assert resp.json()["error"] and "Traceback" not in resp.text and "<script>" not in resp.text


def test_hypothesis_json_bodies_never_crash_the_retrieval_service(retrieval_service):
    retrieval_server = retrieval_service.server
    import hypothesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=8,
    )
    bodies = st.dictionaries(st.sampled_from(["queries", "topk", "return_scores", "x"]), values, max_size=4)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
    @given(bodies)
    def check(body: dict) -> None:
        resp = requests.post(f"{retrieval_server.url}/retrieve", json=body, timeout=10)
        assert resp.status_code in (200, 400, 413), (body, resp.status_code)

    assert hypothesis.__version__
    check()


def test_a_killed_webshop_is_a_typed_error_naming_the_url_and_a_restart_is_picked_up(tmp_path):
    server = ServerProcess("servers.webshop", ["--workers", "1"], log=tmp_path / "w.log").start()
    env = gym.make("SDAR/WebShop-v0", split="test", webshop_url=server.url)
    env.reset(options={"task_id": "synthetic-0"})
    obs, *_ = env.step("search[pillow]")
    server.kill()
    with pytest.raises(WebShopServiceError, match=f"webshop at {server.url}: unreachable"):
        env.step("click[next >]")
    server.start()
    try:
        obs2, *_, info = env.step("click[next >]")
        assert info["valid_action"] and "Page 2" in obs2
    finally:
        server.stop()


def test_servers_bind_localhost_by_default():
    for module in ("servers.webshop.cli", "servers.retrieval.cli"):
        src = (ROOT / (module.replace(".", "/") + ".py")).read_text()
        assert 'default="127.0.0.1"' in src, module


@pytest.mark.slow
def test_a_killed_sdar_serve_takes_its_services_with_it(tmp_path):
    port = free_port()
    proc, _ = _start_sdar_serve(tmp_path, "--services", "webshop", "--webshop-port", str(port), "--workers", "2")
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    proc.kill()  # kill -9: no chance to clean up
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
        except requests.ConnectionError:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the webshop outlived sdar-serve")


def _slow_sockets(url: str, n: int) -> list:
    """``n`` connections that send part of a request header and then nothing (slowloris)."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    socks = []
    for _ in range(n):
        s = socket.create_connection((u.hostname, u.port), timeout=5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(s)
    return socks


@pytest.mark.parametrize("service", ["webshop", "retrieval"])
def test_slow_clients_do_not_block_health(request, service):
    """More half-sent requests than the service has workers x threads (2 x 16 and 2 x 8): /health and a
    real request are still answered at once."""
    server = request.getfixturevalue(f"{service}_server")
    socks = _slow_sockets(server.url, 48)
    try:
        for _ in range(3):
            assert requests.get(f"{server.url}/health", timeout=5).status_code == 200
        if service == "webshop":
            assert (
                requests.get(
                    f"{server.url}/fixed_0/results?q=pillow&page=1", params={"format": "json"}, timeout=10
                ).status_code
                == 200
            )
        else:
            assert requests.post(f"{server.url}/retrieve", json={"queries": ["hamlet"]}, timeout=10).status_code == 200
    finally:
        for s in socks:
            s.close()


def test_clients_pausing_between_requests_keep_their_connections(webshop_server):
    from sdar_envs.http import retrying_session

    session = retrying_session()
    for _ in range(4):
        assert session.get(f"{webshop_server.url}/health", timeout=5).status_code == 200
        time.sleep(2.1)  # past the 2 s keep-alive of the former server (gunicorn), which reset such connections


def test_environments_spread_over_service_replicas_and_pass_over_a_dead_one(webshop_server, retrieval_server, tmp_path):
    """Two WebShop replicas and a dead address: pages come from both live ones, the dead one is passed
    over, and the episode is the same as against one site. The same for retrieval."""
    from sdar_envs.searchqa.search import HttpSearcher
    from sdar_envs.webshop.env import WebShopEnv

    second = ServerProcess("servers.webshop", ["--workers", "1"], log=tmp_path / "w2.log").start()
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        urls = [webshop_server.url, dead, second.url]
        env = gym.make("SDAR/WebShop-v0", split="test", webshop_url=",".join(urls))
        single = gym.make("SDAR/WebShop-v0", split="test", webshop_url=webshop_server.url)
        traces = []
        for e in (env, single):
            obs, info = e.reset(options={"task_id": "synthetic-3"})
            trace, done = [obs], False
            while not done and info["expert_action"]:
                obs, reward, terminated, truncated, info = e.step(
                    f"<think>go</think><action>{info['expert_action']}</action>"
                )
                trace.append((obs, reward))
                done = terminated or truncated
            traces.append(trace)
        assert traces[0] == traces[1]
        shop = env.unwrapped.shop
        assert isinstance(env.unwrapped, WebShopEnv) and shop.replicas.urls == urls
        served = shop.replicas.requests
        assert served[webshop_server.url] > 0 and served[second.url] > 0 and served[dead] == 0
    finally:
        second.stop()
    http = HttpSearcher([dead, retrieval_server.url])
    assert [len(per) for per in http.search(["who wrote hamlet", "capital of france"], 3)] == [3, 3]
    assert http.replicas.requests == {dead: 0, retrieval_server.url: 1}
