"""Sweep: our engine vs alfworld's stock engine on every game of the eval splits.

    .venv/bin/python bench/alfworld_equivalence.py [--splits valid_seen valid_unseen] [--random-steps 10]

For each game, both engines replay the expert walkthrough and then seeded random steps; every
observation, admissible command list, score, ``won`` and ``done`` must be identical. Prints the games
that differ (none expected) and how many walkthroughs won. ~20 min for the 274 eval games on one core
(the stock engine is the slow side); the test suite runs the same check on a type-balanced sample.
"""

from __future__ import annotations

import argparse
import random

from sdar_envs.alfworld.data import list_tasks, read_walkthrough
from sdar_envs.alfworld.engine import start_fast, start_stock


def engine_trace(env, commands: list[str], seed: int, n_random: int = 0) -> list[tuple]:
    """Everything an engine reports along ``commands``, then ``n_random`` seeded random steps."""
    state = env.reset()
    trace = [(state.feedback, tuple(state["admissible_commands"]), state["won"])]
    rng = random.Random(seed)
    for i in range(len(commands) + n_random):
        command = commands[i] if i < len(commands) else rng.choice(state["admissible_commands"])
        state, score, done = env.step(command)
        trace.append((command, state.feedback, tuple(state["admissible_commands"]), state["won"], score, done))
    return trace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", nargs="+", default=["valid_seen", "valid_unseen"])
    ap.add_argument("--random-steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    differ, won, games = [], 0, 0
    for split in args.splits:
        for task in list_tasks(split):
            walkthrough = read_walkthrough(task.game_file)
            stock = engine_trace(start_stock(task.game_file), walkthrough, args.seed, args.random_steps)
            fast = engine_trace(start_fast(task.game_file), walkthrough, args.seed, args.random_steps)
            games += 1
            won += bool(stock[len(walkthrough)][3])
            if stock != fast:
                differ.append(task.task_id)
                print("DIFFERS:", task.task_id, flush=True)
    print(f"{games} games, {len(differ)} differ, {won} walkthroughs won")


if __name__ == "__main__":
    main()
