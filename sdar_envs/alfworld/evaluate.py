"""Deterministic ALFWorld evaluation of a scripted policy over a split, in parallel workers.

    python -m sdar_envs.alfworld.evaluate --split valid_unseen --policy expert --episodes 134

The episode list is ``--episodes`` tasks evenly spaced over the split's fixed (sorted) order, or all of
them (:func:`sdar_envs.core.evaluation_tasks`, the rule every evaluation uses);
the random policy draws from a generator seeded by ``--seed`` and the task index, so a run can be
repeated exactly. Prints success per task type and writes JSON with every episode's outcome.
(The training harness evaluates LLM policies the same way: ``python -m sdar_train.eval``.)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from sdar_envs.alfworld.data import SPLITS, list_tasks
from sdar_envs.core import evaluation_tasks
from sdar_envs.env_pool import EnvPool

POLICIES = ("expert", "random")


def _choose(policy: str, info: dict, rng: random.Random) -> str:
    if policy == "expert" and info.get("expert_action"):
        return f"<action>{info['expert_action']}</action>"
    return f"<action>{rng.choice(info['admissible_actions'])}</action>"


def evaluate(split: str, policy: str, episodes: int | None, seed: int, workers: int, max_steps: int) -> dict:
    all_tasks = list_tasks(split)
    chosen = set(evaluation_tasks([t.task_id for t in all_tasks], episodes))
    tasks = [t for t in all_tasks if t.task_id in chosen]
    results = []
    slots = max(1, min(len(tasks), 2 * max(workers, 1)))
    kwargs = {"split": split, "max_steps": max_steps, "expert": "walkthrough" if policy == "expert" else None}
    with (
        EnvPool("SDAR/ALFWorld-v0", slots, num_workers=workers, env_kwargs=kwargs) as pool,
        tqdm(total=len(tasks), desc=f"{split} [{policy}]", unit="ep") as bar,
    ):
        queue = list(enumerate(tasks))
        live: dict[int, tuple] = {}  # slot -> (task index, rng, info, return)

        def start(slots_free: list[int]) -> None:
            batch = [(s, queue.pop(0)) for s in slots_free if queue]
            if batch:
                out = pool.reset([s for s, _ in batch], options=[{"task_id": t.task_id} for _, (_, t) in batch])
                for s, (i, _) in batch:
                    live[s] = (i, random.Random(seed * 1_000_003 + i), out[s][1], 0.0)

        start(list(range(slots)))
        while live:
            actions = {s: _choose(policy, info, rng) for s, (_, rng, info, _) in live.items()}
            finished = []
            for s, (_, reward, terminated, truncated, info) in pool.step(actions).items():
                i, rng, _, ret = live[s]
                live[s] = (i, rng, info, ret + reward)
                if terminated or truncated:
                    results.append(
                        {
                            "task_id": info["task_id"],
                            "task_type": info["task_type"],
                            "won": info["won"],
                            "steps": info["step"],
                            "return": ret + reward,
                            "index": i,
                        }
                    )
                    finished.append(s)
                    bar.update(1)
            for s in finished:
                del live[s]
            start(finished)
    results.sort(key=lambda r: r["index"])
    by_type: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        by_type[r["task_type"]].append(r["won"])
    return {
        "split": split,
        "policy": policy,
        "seed": seed,
        "episodes": len(results),
        "max_steps": max_steps,
        "success_rate": sum(r["won"] for r in results) / max(len(results), 1),
        "success_by_type": {t: sum(v) / len(v) for t, v in sorted(by_type.items())},
        "mean_steps": sum(r["steps"] for r in results) / max(len(results), 1),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=SPLITS, default="valid_unseen")
    ap.add_argument("--policy", choices=POLICIES, default="expert")
    ap.add_argument("--episodes", type=int, default=None, help="N tasks evenly spaced over the split (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="worker processes (0: in this process)")
    ap.add_argument("--max-steps", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    report = evaluate(args.split, args.policy, args.episodes, args.seed, args.workers, args.max_steps)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    console = Console()
    console.print(f"ALFWorld {args.split}: {report['episodes']} episodes, policy={args.policy}, seed={args.seed}")
    table = Table()
    table.add_column("task type")
    table.add_column("success", justify="right")
    for t, rate in report["success_by_type"].items():
        table.add_row(t, f"{100 * rate:.1f}%")
    table.add_row("all", f"{100 * report['success_rate']:.1f}%", style="bold")
    console.print(table)
    print(f"mean steps {report['mean_steps']:.1f}, {report['seconds']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
