"""Where a WebShop policy loses its exact purchases: each episode of an ``sdar_train.eval`` report replayed
(the shop is deterministic given a goal) and sorted into exact purchase, the target bought with options
not all right, another product bought, or no purchase; and, for the target's purchases that miss, each
option the goal names as clicked right, not clicked, clicked as a value that begins or extends it
(``4x`` for ``4x-large tall``), or clicked as another value.

    python -m sdar_envs.webshop.purchases --report eval.json [--report other.json ...]

The ``expert="shopper"`` demonstrator on the 100 evaluation goals: 57 exact, 5 target with options
missed, 38 other product (it clicks the first result), 0 without purchase.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["OUTCOMES", "SLOTS", "classify", "main"]

OUTCOMES = ("exact", "target, options missed", "other product", "no purchase")
SLOTS = ("right", "not clicked", "begins or extends it", "other value")


def classify(report: dict[str, Any]) -> dict[str, Counter[str]]:
    """``{"outcomes": Counter over OUTCOMES, "slots": Counter over SLOTS}`` for the episodes of
    ``report`` (an ``sdar_train.eval`` report of ``SDAR/WebShop-v0``), replayed in-process."""
    import gymnasium as gym

    import sdar_envs  # noqa: F401  (registers SDAR/*)

    if report.get("env") != "SDAR/WebShop-v0":
        raise ValueError(f"a WebShop evaluation report is needed, got env {report.get('env')!r}")
    env = gym.make("SDAR/WebShop-v0", **report.get("env_kwargs", {}))
    outcomes: Counter[str] = Counter({k: 0 for k in OUTCOMES})
    slots: Counter[str] = Counter({k: 0 for k in SLOTS})
    for episode in report["results"]:
        _, info = env.reset(options={"task_id": episode["task_id"]})
        target, wanted = info["asin"], info["target_options"]
        for action in episode["actions"]:
            _, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        bought = info["purchase"]
        if bought is None:
            outcomes["no purchase"] += 1
        elif info["won"]:
            outcomes["exact"] += 1
        elif bought["asin"] != target:
            outcomes["other product"] += 1
        else:
            outcomes["target, options missed"] += 1
            chosen = bought["options"]
            for name, value in wanted.items():
                got = chosen.get(name)
                if got == value:
                    slots["right"] += 1
                elif got is None:
                    slots["not clicked"] += 1
                elif value.startswith(got) or got.startswith(value):
                    slots["begins or extends it"] += 1
                else:
                    slots["other value"] += 1
    env.close()
    return {"outcomes": outcomes, "slots": slots}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdar_envs.webshop.purchases", description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="append", required=True, help="an sdar_train.eval report (repeatable)")
    args = parser.parse_args(argv)
    table = Table("report", "episodes", *OUTCOMES, *(f"option: {s}" for s in SLOTS))
    for path in args.report:
        report = json.loads(Path(path).read_text())
        found = classify(report)
        n = sum(found["outcomes"].values())
        table.add_row(
            Path(path).name,
            str(n),
            *(str(found["outcomes"][k]) for k in OUTCOMES),
            *(str(found["slots"][k]) for k in SLOTS),
        )
    Console(width=max(Console().width, 160)).print(table)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
