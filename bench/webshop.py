"""WebShop: search latency and full-episode throughput, in-process and over HTTP, side by side.

    .venv/bin/python bench/webshop.py [--queries 300] [--episodes 100]

* search: BM25 top-50 for the goals' instructions (fresh queries, no cache), p50/p95 per query;
  in-process (Pyserini in this process) and over HTTP (``sdar-webshop`` results page as JSON);
* episodes: the expert's scripted path (search, click product, click options, buy: about 5-6 steps)
  through ``SDAR/WebShop-v0``, in-process and with ``webshop_url``; ms per episode and episodes/s.
Targets: search p95 < 20 ms on the 1k catalogue; a scripted episode in-process < 50 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import requests

from sdar_envs.webshop.shop import Shop
from servers.process import ServerProcess


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def episodes(env: gym.Env, task_ids: list[str]) -> list[float]:
    out = []
    for task in task_ids:
        t = time.perf_counter()
        _, info = env.reset(options={"task_id": task})
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(f"<action>{info['expert_action']}</action>")
            done = terminated or truncated
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--episodes", type=int, default=100)
    args = p.parse_args()
    shop = Shop()
    goals = shop.catalog.goals("synthetic", "train")
    queries = list(dict.fromkeys(g.instruction.split(" with ")[0] for g in goals))[: args.queries * 2]
    shop.search("warm up the jvm")
    server = ServerProcess("servers.webshop", ["--workers", "1", "--threads", "8"]).start()
    session = requests.Session()
    local_ms, http_ms = [], []
    try:
        for i, q in enumerate(queries[: args.queries]):
            t = time.perf_counter()
            shop.search(q)
            local_ms.append((time.perf_counter() - t) * 1000)
            q2 = queries[args.queries + i] if args.queries + i < len(queries) else q + " x"
            t = time.perf_counter()
            session.get(
                f"{server.url}/fixed_0/results", params={"q": q2, "page": 1, "format": "json"}
            ).raise_for_status()
            http_ms.append((time.perf_counter() - t) * 1000)
        tasks = [f"synthetic-{500 + i}" for i in range(args.episodes)]
        local_env = gym.make("SDAR/WebShop-v0", split="train")
        http_env = gym.make("SDAR/WebShop-v0", split="train", webshop_url=server.url)
        episodes(local_env, tasks[:5]), episodes(http_env, tasks[:5])  # warm caches alike
        ep_local = episodes(local_env, tasks)
        ep_http = episodes(http_env, tasks)
    finally:
        server.stop()
    print(
        f"catalogue: {len(shop.catalog.products)} products; {len(local_ms)} fresh queries per side; {args.episodes} expert episodes"
    )
    print("| | search p50 (ms) | search p95 (ms) | episode mean (ms) | episodes/s |")
    print("|---|---|---|---|---|")
    for name, s, e in (("in-process", local_ms, ep_local), ("HTTP (sdar-webshop, 1 worker)", http_ms, ep_http)):
        print(
            f"| {name} | {statistics.median(s):.1f} | {pct(s, 0.95):.1f} | {statistics.mean(e):.1f} | {1000 / statistics.mean(e):.1f} |"
        )
    print(
        f"targets: search p95 < 20 ms -> {'met' if pct(local_ms, 0.95) < 20 else 'MISSED'} (in-process); "
        f"episode < 50 ms in-process -> {'met' if statistics.mean(ep_local) < 50 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
