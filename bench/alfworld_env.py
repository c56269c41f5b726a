"""Reset and step latency: SDAR/ALFWorld-v0 vs alfworld's stock textworld loop, same games, one run.

    .venv/bin/python bench/alfworld_env.py [--games 20] [--split valid_unseen]

For each game (the first games of each task type, in the split's fixed order) both engines are run
side by side, interleaved so that machine noise hits both alike:

* stock: ``textworld.start(game, infos, wrappers=[AlfredDemangler, AlfredInfos])`` (what alfworld's
  AlfredTWEnv registers), then ``reset()`` twice and the expert walkthrough with ``step``;
* ours: ``gymnasium.make("SDAR/ALFWorld-v0")``, ``reset(options={"task_id": ...})`` twice, and the same
  walkthrough through ``step`` (raw ``<action>`` text, parsed and validated as in training).

Resets are reported three ways: "first reset, cold" loads a game never seen on this machine (our engine
translates its PDDL once); "first reset, cached" loads it in a new process-level cache after an earlier
run left the translation on disk (the usual case from the second epoch or run on); "repeat reset"
resets a game already loaded, which is 7 of every 8 resets of a GRPO group of 8.
Targets: reset >= 5x, step >= 3x faster than stock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import gymnasium as gym

import sdar_envs  # noqa: F401
from sdar_envs.alfworld.data import TASK_TYPES, list_tasks, read_walkthrough
from sdar_envs.alfworld.engine import start_stock


def pick_games(split: str, n: int) -> list:
    tasks = list_tasks(split)
    by_type = {t: [x for x in tasks if x.task_type == t] for t in TASK_TYPES}
    out = []
    i = 0
    while len(out) < n:  # round-robin over task types: a balanced, fixed sample
        for t in TASK_TYPES:
            if i < len(by_type[t]) and len(out) < n:
                out.append(by_type[t][i])
        i += 1
    return out


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--games", type=int, default=20)
    ap.add_argument("--split", default="valid_unseen")
    args = ap.parse_args()

    games = pick_games(args.split, args.games)
    # A fresh translation cache, so "cold" really is cold; the second env reads what the first wrote.
    os.environ["SDAR_ALFWORLD_TRANSLATION_CACHE"] = tempfile.mkdtemp(prefix="sdar-bench-sas-")
    env = gym.make("SDAR/ALFWorld-v0", split=args.split)
    env_disk = gym.make("SDAR/ALFWorld-v0", split=args.split)
    rows = {k: [] for k in ("stock_first", "stock_repeat", "ours_first", "ours_cached", "ours_repeat")}
    stock_steps, our_steps = [], []
    for task in games:
        walkthrough = read_walkthrough(task.game_file)

        t_load, tw = timed(lambda: start_stock(task.game_file))  # noqa: B023
        t_reset, _ = timed(tw.reset)
        rows["stock_first"].append(t_load + t_reset)
        rows["stock_repeat"].append(timed(tw.reset)[0])
        for command in walkthrough:
            stock_steps.append(timed(lambda: tw.step(command))[0])  # noqa: B023

        opts = {"task_id": task.task_id}
        rows["ours_first"].append(timed(lambda: env.reset(options=opts))[0])  # noqa: B023
        rows["ours_cached"].append(timed(lambda: env_disk.reset(options=opts))[0])  # noqa: B023
        rows["ours_repeat"].append(timed(lambda: env.reset(options=opts))[0])  # noqa: B023
        for command in walkthrough:
            dt, (_, _, _, _, info) = timed(lambda: env.step(f"<action>{command}</action>"))  # noqa: B023
            our_steps.append(dt)
        assert info["won"], task.task_id

    def ms(xs):
        return f"{1000 * statistics.mean(xs):8.1f} {1000 * statistics.median(xs):8.1f}"

    print(f"ALFWorld {args.split}: {len(games)} games, {len(our_steps)} walkthrough steps each engine")
    print(f"{'':16s} {'stock mean/median ms':>20s} {'ours mean/median ms':>20s} {'speed-up (mean)':>16s}")
    for label, s, o in (
        ("first, cold", rows["stock_first"], rows["ours_first"]),
        ("first, cached", rows["stock_first"], rows["ours_cached"]),
        ("repeat reset", rows["stock_repeat"], rows["ours_repeat"]),
        ("step", stock_steps, our_steps),
    ):
        print(f"{label:16s} {ms(s):>20s} {ms(o):>20s} {statistics.mean(s) / statistics.mean(o):15.1f}x")
    group_stock = statistics.mean(rows["stock_first"]) + 7 * statistics.mean(rows["stock_repeat"])
    group_ours = statistics.mean(rows["ours_first"]) + 7 * statistics.mean(rows["ours_repeat"])
    print(
        f"{'group of 8 resets':16s} {1000 * group_stock:20.1f} {1000 * group_ours:20.1f} {group_stock / group_ours:15.1f}x"
    )


if __name__ == "__main__":
    main()
