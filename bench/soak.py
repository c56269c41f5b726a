"""Soak: resident memory, threads and open files of each service and of the EnvPool workers under
long continuous load, sampled over time and reported as growth per hour (target: flat within noise).

    .venv/bin/python bench/soak.py webshop   --minutes 30 [--clients 32]
    .venv/bin/python bench/soak.py retrieval --minutes 30 [--clients 16] [--retriever bm25|dense]
    .venv/bin/python bench/soak.py envpool   --episodes 2000 [--envs 8] [--workers 2]

* webshop: ``sdar-webshop`` (2 workers, 127.0.0.1); each client plays test goals to the end through
  the env's HTTP back-end with the expert's actions (search, results, item, options, buy), one after
  another, for the whole time: many sessions, each a few requests, as training rollouts make them.
* retrieval: ``sdar-retrieval`` (2 workers); each client posts batches of 8 questions at k=3.
* envpool: an ``EnvPool`` of ALFWorld (valid_seen) playing the walkthrough expert's episodes, reset
  after reset, until ``--episodes`` are done.

The server's whole process tree (or the pool's workers) is sampled every ``--every`` seconds. Growth is
the least-squares slope after a warm-up (the first 20% of the samples: caches, allocator pools and
thread pools fill then), per hour, beside the warm level. The test suite runs a short version of each
(``tests/services/test_soak.py``) and fails on clear growth.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psutil

METRICS = ("rss_mb", "threads", "fds")


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the start
    rss_mb: float
    threads: int
    fds: int


def measure(pids: Sequence[int], t: float) -> Sample:
    """Resident memory, threads and open file descriptors summed over ``pids`` and all their children."""
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs[pid] = root
            procs.update({c.pid: c for c in root.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    rss = threads = fds = 0
    for p in procs.values():
        try:
            with p.oneshot():
                rss += p.memory_info().rss
                threads += p.num_threads()
                fds += p.num_fds()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return Sample(t, rss / 2**20, threads, fds)


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) points, per second."""
    if len(points) < 2:
        return 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def growth(samples: Sequence[Sample], warmup: float = 0.2) -> dict[str, dict[str, float]]:
    """Per metric: the warm level (mean of the first tenth after warm-up), the level at the start of the
    second half, the last level (mean of the last tenth), and the least-squares slope after warm-up and
    over the second half alone, per hour (a cache that fills for a while after the warm-up shows in the
    first and not in the second; a leak in both)."""
    warm = list(samples[int(len(samples) * warmup) :]) or list(samples)
    late = list(samples[len(samples) // 2 :]) or list(samples)
    tenth = max(1, len(warm) // 10)
    out = {}
    for m in METRICS:
        ys = [float(getattr(s, m)) for s in warm]
        mid = [float(getattr(s, m)) for s in late[: max(1, len(late) // 5)]]
        out[m] = {
            "warm": sum(ys[:tenth]) / tenth,
            "half": sum(mid) / len(mid),  # the level at the start of the second half
            "last": sum(ys[-tenth:]) / tenth,
            "per_hour": _slope([(s.t, float(getattr(s, m))) for s in warm]) * 3600,
            "per_hour_second_half": _slope([(s.t, float(getattr(s, m))) for s in late]) * 3600,
        }
    return out


def soak(
    pids: Callable[[], Sequence[int]], work: Callable[[threading.Event], int], seconds: float, every: float
) -> dict[str, Any]:
    """Run ``work`` (it loops until the event is set; returns what it served) for ``seconds`` while sampling
    ``pids()``; returns the samples, the growth and the work done."""
    stop = threading.Event()
    served: list[int] = []
    errors: list[str] = []

    def run() -> None:
        try:
            served.append(work(stop))
        except Exception as e:  # a soak that errors is a finding, not a crash of the bench
            errors.append(f"{type(e).__name__}: {e}")

    worker = threading.Thread(target=run, daemon=True)
    t0 = time.monotonic()
    worker.start()
    samples = []
    while time.monotonic() - t0 < seconds and worker.is_alive():
        samples.append(measure(pids(), time.monotonic() - t0))
        stop.wait(every)
    stop.set()
    worker.join(timeout=120)
    samples.append(measure(pids(), time.monotonic() - t0))
    return {
        "seconds": time.monotonic() - t0,
        "served": sum(served),
        "errors": errors,
        "growth": growth(samples),
        "samples": [asdict(s) for s in samples],
    }


def _clients(n: int, one: Callable[[int, threading.Event], int]) -> Callable[[threading.Event], int]:
    """``n`` client threads, each looping ``one(i, stop)`` (returns what it served) until ``stop``."""

    def work(stop: threading.Event) -> int:
        counts = [0] * n
        failures: list[BaseException] = []

        def loop(i: int) -> None:
            try:
                while not stop.is_set():
                    counts[i] += one(i, stop)
            except BaseException as e:
                failures.append(e)
                stop.set()

        threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise failures[0]
        return sum(counts)

    return work


def soak_webshop(seconds: float, clients: int = 32, every: float = 5.0, workers: int = 2) -> dict[str, Any]:
    """``clients`` sessions playing test goals to the end against ``sdar-webshop``; served = episodes."""
    import gymnasium as gym

    import sdar_envs  # noqa: F401
    from servers.process import ServerProcess

    server = ServerProcess("servers.webshop", ["--workers", str(workers), "--threads", "32"]).start()
    try:
        envs = [gym.make("SDAR/WebShop-v0", split="test", webshop_url=server.url) for _ in range(clients)]
        goals = envs[0].unwrapped.task_ids()
        counter = itertools.count()

        def episode(i: int, stop: threading.Event) -> int:
            env = envs[i]
            obs, info = env.reset(options={"task_id": goals[next(counter) % len(goals)]})
            done = False
            while not done:
                obs, reward, terminated, truncated, info = env.step(info["expert_action"])
                done = terminated or truncated
            return 1

        assert server.proc is not None
        pid = server.proc.pid
        return soak(lambda: [pid], _clients(clients, episode), seconds, every)
    finally:
        server.stop()


def soak_retrieval(
    seconds: float, clients: int = 16, every: float = 5.0, workers: int = 2, retriever: str = "bm25"
) -> dict[str, Any]:
    """``clients`` posting batches of 8 questions (k=3) to ``sdar-retrieval``; served = requests."""
    from sdar_envs.searchqa.data import load_questions
    from sdar_envs.searchqa.search import HttpSearcher
    from servers.process import ServerProcess

    server = ServerProcess("servers.retrieval", ["--retriever", retriever, "--workers", str(workers)]).start()
    try:
        questions = [r.question for r in load_questions(["nq", "hotpotqa", "musique"], "all")]
        searchers = [HttpSearcher(server.url) for _ in range(clients)]
        counter = itertools.count()

        def request(i: int, stop: threading.Event) -> int:
            k = next(counter) * 8 % len(questions)
            searchers[i].search(questions[k : k + 8] or questions[:8], 3)
            return 1

        assert server.proc is not None
        pid = server.proc.pid
        return soak(lambda: [pid], _clients(clients, request), seconds, every)
    finally:
        server.stop()


def soak_envpool(episodes: int, envs: int = 8, workers: int = 2, every: float = 5.0) -> dict[str, Any]:
    """ALFWorld walkthrough episodes in an ``EnvPool`` until ``episodes`` are done; served = episodes."""
    from sdar_envs import EnvPool

    pool = EnvPool(
        "SDAR/ALFWorld-v0", envs, num_workers=workers, env_kwargs={"split": "valid_seen", "expert": "walkthrough"}
    )
    try:
        games = pool.call("task_ids")[0]
        counter = itertools.count()

        def work(stop: threading.Event) -> int:
            done = 0
            while done < episodes and not stop.is_set():
                resets = pool.reset(options=[{"task_id": games[next(counter) % len(games)]} for _ in range(envs)])
                infos = {i: info for i, (obs, info) in resets.items()}
                live = set(infos)
                while live:
                    out = pool.step({i: f"<action>{infos[i]['expert_action']}</action>" for i in live})
                    for i, (_obs, _reward, terminated, truncated, info) in out.items():
                        infos[i] = info
                        if terminated or truncated or not info.get("expert_action"):
                            live.discard(i)
                done += envs
            return done

        return soak(lambda: pool.worker_pids, work, float("inf"), every)
    finally:
        pool.close()


def print_report(name: str, report: dict[str, Any]) -> None:
    g = report["growth"]
    print(f"{name}: {report['seconds'] / 60:.1f} min, {report['served']:,} served, {len(report['samples'])} samples")
    print("| | warm | last | growth per hour after warm-up | over the second half |")
    print("|---|---|---|---|---|")
    for key, label in (("rss_mb", "resident memory (MB)"), ("threads", "threads"), ("fds", "open files")):
        row = g[key]
        print(
            f"| {label} | {row['warm']:.0f} | {row['last']:.0f} | {row['per_hour']:+.1f} | {row['per_hour_second_half']:+.1f} |"
        )
    if report["errors"]:
        print("errors:", "; ".join(report["errors"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", choices=["webshop", "retrieval", "envpool"])
    p.add_argument("--minutes", type=float, default=30.0, help="webshop, retrieval: how long")
    p.add_argument("--episodes", type=int, default=2000, help="envpool: how many episodes")
    p.add_argument("--clients", type=int, default=None, help="concurrent clients (webshop 32, retrieval 16)")
    p.add_argument("--retriever", default="bm25", choices=["bm25", "dense"])
    p.add_argument("--envs", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--json", help="also write the report (with every sample) here")
    p.add_argument("--report", help="print the report of a JSON written by --json (growth recomputed), and exit")
    args = p.parse_args()
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        saved["growth"] = growth([Sample(**x) for x in saved["samples"]])
        print_report(args.target, saved)
        return
    if args.target == "webshop":
        report = soak_webshop(args.minutes * 60, args.clients or 32, args.every, args.workers)
    elif args.target == "retrieval":
        report = soak_retrieval(args.minutes * 60, args.clients or 16, args.every, args.workers, args.retriever)
    else:
        report = soak_envpool(args.episodes, args.envs, args.workers, args.every)
    print_report(args.target, report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
