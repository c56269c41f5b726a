"""Requests/s and latency of both services at 1, 8 and 32 concurrent clients, as a table.

    .venv/bin/python bench/services.py [--seconds 5] [--workers 2]

Both services run as they do under ``sdar-serve`` (uvicorn, ``--workers`` each, 127.0.0.1). Each
client loops for ``--seconds``: WebShop clients fetch a results page and an item page as JSON (what
the env's HTTP back-end does per step); retrieval clients post one query at k=3 (a rollout's search).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import requests

from sdar_envs.searchqa.data import load_questions
from sdar_envs.webshop.catalog import load_catalog
from servers.process import ServerProcess


def run(clients: int, seconds: float, request) -> tuple[float, float, float, int]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def loop(i: int) -> None:
        session, mine, n = requests.Session(), [], 0
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            try:
                request(session, i, n)
            except requests.RequestException:
                errors[0] += 1
            mine.append((time.perf_counter() - t) * 1000)
            n += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    return (
        len(latencies) / elapsed,
        statistics.median(latencies),
        latencies[int(0.95 * (len(latencies) - 1))],
        errors[0],
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    args = p.parse_args()
    catalog = load_catalog()
    goals = catalog.goals("synthetic", "train")
    questions = [r.question for r in load_questions(["nq"], "train")]
    webshop = ServerProcess("servers.webshop", ["--workers", str(args.workers), "--threads", "16"]).start(timeout=300)
    retrieval = ServerProcess("servers.retrieval", ["--workers", str(args.workers), "--threads", "16"]).start(
        timeout=300
    )

    def shop(session: requests.Session, i: int, n: int) -> None:
        g = goals[(i * 997 + n) % len(goals)]
        q = g.instruction.split(" with ")[0][:200]
        session.get(
            f"{webshop.url}/fixed_{(i + n) % 500}/results", params={"q": q, "page": 1, "format": "json"}
        ).raise_for_status()
        session.get(
            f"{webshop.url}/fixed_0/item/{g.asin}", params={"q": q, "page": 1, "format": "json"}
        ).raise_for_status()

    def search(session: requests.Session, i: int, n: int) -> None:
        q = questions[(i * 7919 + n) % len(questions)]
        session.post(
            f"{retrieval.url}/retrieve", json={"queries": [q], "topk": 3, "return_scores": True}
        ).raise_for_status()

    rows = []
    try:
        for c in args.clients:
            for name, fn in (("webshop (results + item page)", shop), ("retrieval (1 query, k=3)", search)):
                rows.append((name, c, *run(c, args.seconds, fn)))
    finally:
        webshop.stop()
        retrieval.stop()
    print(f"{args.workers} worker processes per service, {args.seconds:.0f} s per cell, 127.0.0.1")
    print("| service | clients | loops/s (webshop: results + item page = 1 loop) | p50 (ms) | p95 (ms) | errors |")
    print("|---|---|---|---|---|---|")
    for name, c, rps, p50, p95, errs in rows:
        print(f"| {name} | {c} | {rps:,.0f} | {p50:.1f} | {p95:.1f} | {errs} |")


if __name__ == "__main__":
    main()
