"""Retrieval service vs in-process Pyserini: batched throughput and single-query latency, one run.

    .venv/bin/python bench/retrieval.py [--batches 20] [--batch-size 256] [--singles 500] [--workers 1]

* limit: ``BM25Searcher.batch_search`` (Lucene's batch search) in this process, the same batches;
* service: ``sdar-retrieval`` (uvicorn, started here on 127.0.0.1) answering ``POST /retrieve``
  with the same batches, k=3, scores returned;
* latency: one query per request over HTTP (a kept-alive session), k=3, p50/p95.
Batches alternate between the two so machine noise hits both alike. Targets: the service
delivers >= 70% of the in-process batch throughput; single-query p95 < 20 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

import requests

from sdar_envs.lucene import cached_index
from sdar_envs.searchqa.data import CORPUS_PATH, load_questions
from sdar_envs.searchqa.search import LocalSearcher
from servers.process import ServerProcess


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--singles", type=int, default=500)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    questions = [r.question for r in load_questions(["nq", "hotpotqa", "musique"], "all")]
    index = cached_index(CORPUS_PATH, "searchqa")
    local = LocalSearcher(index)
    server = ServerProcess("servers.retrieval", ["--index", str(index), "--workers", str(args.workers)]).start()
    session = requests.Session()
    try:
        batches = [questions[(i * args.batch_size) % len(questions) :][: args.batch_size] for i in range(args.batches)]
        for b in batches[:3]:  # warm both JITs
            local.search(b, 3)
            session.post(
                f"{server.url}/retrieve", json={"queries": b, "topk": 3, "return_scores": True}
            ).raise_for_status()
        t_local = t_http = 0.0
        for b in batches:
            t = time.perf_counter()
            local.search(b, 3)
            t_local += time.perf_counter() - t
            t = time.perf_counter()
            session.post(
                f"{server.url}/retrieve", json={"queries": b, "topk": 3, "return_scores": True}
            ).raise_for_status()
            t_http += time.perf_counter() - t
        n = sum(len(b) for b in batches)
        lat = []
        for q in questions[: args.singles]:
            t = time.perf_counter()
            session.post(
                f"{server.url}/retrieve", json={"queries": [q], "topk": 3, "return_scores": True}
            ).raise_for_status()
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        server.stop()
    lat.sort()
    p50, p95 = statistics.median(lat), lat[int(0.95 * len(lat)) - 1]
    qps_local, qps_http = n / t_local, n / t_http
    print(f"corpus: {local.bm25.num_docs} passages; {args.batches} batches x {args.batch_size} queries, k=3")
    print("| | queries/s | ratio to the limit |")
    print("|---|---|---|")
    print(f"| in-process batch_search (the limit) | {qps_local:,.0f} | 1.00 |")
    print(f"| sdar-retrieval over HTTP, {args.workers} worker(s) | {qps_http:,.0f} | {qps_http / qps_local:.2f} |")
    print(f"single query over HTTP, k=3, {len(lat)} requests: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    print(
        f"targets: ratio >= 0.70 -> {'met' if qps_http / qps_local >= 0.7 else 'MISSED'}; p95 < 20 ms -> {'met' if p95 < 20 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
