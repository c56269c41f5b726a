"""RL arms from one warm start: GRPO, SDAR, GRPO+OPSD x seeds as resumable ``python -m sdar_train`` runs,
their held-out curves, and the report's table and plots. The planted miniature (``replicate``) and the real
model's comparison (``real_model``) share it, so both report the same way.

A run is done when its ``eval.json`` (the trainer's final evaluation) exists; a run that stopped resumes from
its last checkpoint, so a comparison can continue over several sittings.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdar_train.config import ALGORITHMS
from sdar_train.errors import ConfigError
from sdar_train.report import mean_interval, save_figure

__all__ = [
    "DIAGNOSTICS",
    "ArmRun",
    "ArmRunFailed",
    "arm_difference_table",
    "behaviour_table",
    "check_comparison",
    "collect_curves",
    "diagnostics_table",
    "evaluation_at",
    "goal_pairs",
    "higher_lower",
    "outcome_table",
    "paired_goal_table",
    "plot_curves",
    "plot_diagnostics",
    "run_arms",
]

Curves = dict[str, dict[int, list[dict[str, Any]]]]  # arm -> seed -> metrics rows, step 0 = the warm start
DIAGNOSTICS = (
    ("gate_mean", "gate mean"),
    ("gap_negative", "share of negative-gap tokens"),
    ("gap_mean", "mean teacher-student gap"),
    ("invalid_rate", "invalid-turn rate"),
)


class ArmRunFailed(RuntimeError):
    """A ``python -m sdar_train`` run of an arm exited non-zero; its message names the run and its log."""


@dataclass(frozen=True)
class ArmRun:
    """One arm and seed: where it writes and its ``python -m sdar_train`` arguments (no --resume/--overwrite)."""

    arm: str
    seed: int
    run_dir: Path
    args: tuple[str, ...]

    @property
    def done(self) -> bool:
        return (self.run_dir / "eval.json").exists()


def check_comparison(arms: Sequence[str], seeds: Sequence[int], group_size: int, train_reward: str) -> None:
    """The rules every arms comparison's config shares; raises :class:`ConfigError` naming the field."""
    unknown = [a for a in arms if a not in ALGORITHMS or ALGORITHMS[a].sft]
    if unknown or not arms:
        raise ConfigError(
            f"arms must be RL algorithms ({', '.join(a for a in ALGORITHMS if a != 'sft')}), got {unknown}"
        )
    if not seeds:
        raise ConfigError("seeds must name at least one seed")
    if group_size < 2:
        raise ConfigError("group_size must be >= 2 for group-relative advantages")
    if train_reward not in ("won", "return"):
        raise ConfigError(f"train_reward must be won or return, got {train_reward!r}")


def _log(msg: str) -> None:
    print(f"[arms] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def run_arms(runs: Sequence[ArmRun], parallel: int = 1) -> None:
    """Every run not yet done, in the order given (put seeds outermost, so a short budget sees every arm),
    ``parallel`` at a time, each a process logging to ``run_dir/train.log``. A run that fails is logged at
    once with its exit status, no queued run starts after it, and the first failure raises once the runs
    already started have finished. A run's result does not depend on which others share the machine."""
    failed = threading.Event()

    def one(run: ArmRun) -> None:
        if failed.is_set():  # a killed run (the out-of-memory killer, a full disk) would kill the next too
            _log(f"{run.arm} seed {run.seed} not started: a run before it failed")
            return
        resume = (run.run_dir / "checkpoints").exists()
        args = [*run.args, *(["--resume", "true"] if resume else ["--overwrite", "true"])]
        _log(f"{run.arm} seed {run.seed}{' (resuming)' if resume else ''}")
        run.run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(run.run_dir / "train.log", "a") as log:
            code = subprocess.run([sys.executable, "-m", "sdar_train", *args], stdout=log, stderr=log).returncode
        if code != 0:
            failed.set()
            why = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            _log(f"{run.arm} seed {run.seed} FAILED after {time.time() - t0:.0f} s ({why}); its log: "
                 f"{run.run_dir / 'train.log'}; run again to resume it from its last checkpoint")  # fmt: skip
            raise ArmRunFailed(f"{run.arm} seed {run.seed} failed ({why}); see {run.run_dir / 'train.log'}")
        _log(f"{run.arm} seed {run.seed} done in {time.time() - t0:.0f} s")

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(one, run) for run in runs if not run.done]
    for error in (f.exception() for f in futures):
        if error is not None:
            raise error


def collect_curves(runs: Iterable[tuple[str, int, Path, Mapping[str, float]]]) -> Curves:
    """Per (arm, seed, run_dir, start), the rows of its ``metrics.jsonl`` after a step-0 row: ``start``, the
    held-out ``eval_success`` and ``eval_return`` of the model that run started from. Runs not started are left out."""
    curves: Curves = {}
    for arm, seed, run_dir, start in runs:
        metrics = run_dir / "metrics.jsonl"
        if not metrics.exists():
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        first = {"step": 0, "eval_success": start["eval_success"], "eval_return": start["eval_return"]}
        curves.setdefault(arm, {})[seed] = [first, *rows]
    return curves


def _evaluations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The held-out points of a run, one per step (a resumed run may have logged a step twice: the last wins)."""
    by_step = {int(r["step"]): r for r in rows if "eval_success" in r}
    return [by_step[s] for s in sorted(by_step)]


def outcome_table(curves: Curves, steps: int) -> list[str]:
    """Markdown rows: per arm, over the seeds evaluated at ``steps``, held-out success and score at the start
    and at ``steps`` with 95% t-intervals over seeds, and the score's change (paired by seed)."""
    lines = [
        f"| arm | seeds | success: start | success: step {steps} | score: start | score: step {steps} | score: change |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(values: list[float], sign: str = "") -> str:
        m, h = mean_interval(values)
        return f"{m:{sign}.3f} ± {h:.3f}" if len(values) > 1 else f"{m:{sign}.3f}"  # one seed: no interval

    for arm, runs in curves.items():
        points = {seed: {int(p["step"]): p for p in _evaluations(rows)} for seed, rows in runs.items()}
        complete = [seed for seed, pts in points.items() if steps in pts]
        if not complete:
            continue
        first = [points[s][0] for s in complete]
        last = [points[s][steps] for s in complete]
        lines.append(
            f"| {arm} | {len(complete)} | {cell([p['eval_success'] for p in first])} | "
            f"{cell([p['eval_success'] for p in last])} | {cell([p['eval_return'] for p in first])} | "
            f"{cell([p['eval_return'] for p in last])} | "
            f"{cell([b['eval_return'] - a['eval_return'] for a, b in zip(first, last, strict=True)], '+')} |"
        )
    return lines


def evaluation_at(run_dir: Path, step: int | None = None) -> tuple[int, dict[str, Any]] | None:
    """A run's held-out evaluation with every episode, and the step it was made after: at ``step``, or the
    latest (the final ``eval.json`` once the run is done, else the last ``eval-step<N>.json``); None if none."""
    found: dict[int, Path] = {int(f.stem.removeprefix("eval-step")): f for f in run_dir.glob("eval-step*.json")}
    final = run_dir / "eval.json"
    if final.exists():
        config = run_dir / "config.json"
        steps = json.loads(config.read_text())["steps"] if config.exists() else max(found, default=0) + 1
        found[int(steps)] = final
    if step is not None:
        return (step, json.loads(found[step].read_text())) if step in found else None
    return (max(found), json.loads(found[max(found)].read_text())) if found else None


def goal_pairs(base: Mapping[str, Any], other: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """The result rows of two evaluations paired by goal (``task_id``), for the goals both played, in
    ``base``'s order: greedy evaluations of the same goals, so each goal is its own control."""
    others = {r["task_id"]: r for r in other["results"]}
    return [(r, others[r["task_id"]]) for r in base["results"] if r["task_id"] in others]


def higher_lower(diffs: Sequence[float]) -> tuple[int, int]:
    """How many paired differences are above and below zero (ties, to rounding, are neither)."""
    return sum(d > 1e-9 for d in diffs), sum(d < -1e-9 for d in diffs)


def arm_difference_table(runs: Mapping[tuple[str, int], Path], baseline: str, step: int) -> list[str]:
    """Markdown rows: per seed, each arm's held-out score at ``step`` minus ``baseline``'s at the same step, goal
    by goal (the same goals, greedy): the mean difference with its 95% t-interval over goals, and how many
    goals scored higher or lower. Arms of one seed share the task stream and the sampling seed, so this is
    the nearest to a controlled comparison a seed gives."""
    lines = [
        f"| arm | seed | goals | score - {baseline} (95% over goals) | higher / lower |",
        "|---|---|---|---|---|",
    ]
    for (arm, seed), run_dir in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if arm == baseline or (seed_base := runs.get((baseline, seed))) is None:
            continue
        ours, theirs = evaluation_at(run_dir, step), evaluation_at(seed_base, step)
        if ours is None or theirs is None:
            continue
        diffs = [a["return"] - b["return"] for b, a in goal_pairs(theirs[1], ours[1])]
        if not diffs:
            continue
        m, h = mean_interval(diffs)
        higher, lower = higher_lower(diffs)
        lines.append(f"| {arm} | {seed} | {len(diffs)} | {m:+.3f} ± {h:.3f} | {higher} / {lower} |")
    return lines


def paired_goal_table(
    evaluations: Iterable[tuple[str, int, Mapping[str, Any], Mapping[str, Any]]],
) -> list[str]:
    """Markdown rows: per (label, seed, start, end), a run's held-out evaluation (:func:`evaluation_at`) against
    the evaluation of the model it started from, goal by goal (the same goals, greedy, so each goal is its
    own control): the mean paired score change with its 95% t-interval over goals, how many goals' actions
    changed and scored higher or lower, and turns per episode. With few seeds this is the interval that says
    whether one run moved at all. The label is an arm, or an arm and the step its evaluation was made after."""

    def mean(rows: Sequence[Mapping[str, Any]], key: str) -> float:
        return sum(float(r[key]) for r in rows) / len(rows)

    lines = [
        "| arm | seed | goals | score: start -> end | paired change (95% over goals) | actions changed | "
        "higher / lower | turns per episode: start -> end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, seed, start, report in evaluations:
        pairs = goal_pairs(start, report)
        if not pairs:
            continue
        base, ends = [b for b, _ in pairs], [e for _, e in pairs]
        diffs = [e["return"] - b["return"] for b, e in pairs]
        change, half = mean_interval(diffs)
        higher, lower = higher_lower(diffs)
        lines.append(
            f"| {arm} | {seed} | {len(pairs)} | {mean(base, 'return'):.3f} -> {mean(ends, 'return'):.3f} | "
            f"{change:+.3f} ± {half:.3f} | {sum(b['actions'] != e['actions'] for b, e in pairs)} | "
            f"{higher} / {lower} | {mean(base, 'turns'):.2f} -> {mean(ends, 'turns'):.2f} |"
        )
    return lines


def behaviour_table(evaluations: Iterable[tuple[str, str | int, Mapping[str, Any]]], max_turns: int) -> list[str]:
    """Markdown rows: per (label, seed, evaluation), how its held-out episodes went: how many the agent ended
    itself (on WebShop, a purchase) rather than the turn limit ``max_turns``, their mean score, the share of
    turns that repeat the turn before (loops), and turns per episode. Tells a policy that scores more by
    choosing better from one that scores more by finishing more often. An evaluation written before rows
    carried ``truncated`` counts an episode of ``max_turns`` turns that did not win as cut."""

    def cut(r: Mapping[str, Any]) -> bool:
        return bool(r["truncated"]) if "truncated" in r else (r["turns"] >= max_turns and not r["won"])

    lines = [
        "| arm | seed | goals | ended by the agent | score when it ended | repeated actions (share of turns) | turns per episode |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, seed, report in evaluations:
        rows = report["results"]
        if not rows:
            continue
        ended = [r for r in rows if not cut(r)]
        turns = sum(len(r["actions"]) for r in rows)
        repeats = sum(a == b for r in rows for a, b in itertools.pairwise(r["actions"]))
        score = f"{sum(r['return'] for r in ended) / len(ended):.3f}" if ended else "-"
        lines.append(
            f"| {arm} | {seed} | {len(rows)} | {len(ended)} | {score} | {repeats / max(turns, 1):.3f} | "
            f"{sum(r['turns'] for r in rows) / len(rows):.2f} |"
        )
    return lines


def plot_curves(curves: Curves, path: Path, what: str) -> Path:
    """Held-out success and score per arm over RL steps (mean over seeds, band = 95% interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, 2, figsize=(11, 4))
    for arm, runs in curves.items():
        points = [_evaluations(rows) for rows in runs.values()]
        steps = sorted({int(r["step"]) for pts in points for r in pts})
        for (key, title), ax in zip((("eval_success", "success"), ("eval_return", "score")), panels, strict=True):
            stats = [mean_interval([r[key] for pts in points for r in pts if r["step"] == s]) for s in steps]
            seeds = f"{len(runs)} seed" + ("s" if len(runs) > 1 else "")
            ax.plot(steps, [m for m, _ in stats], marker="o", label=f"{arm} ({seeds})")
            ax.fill_between(steps, [m - h for m, h in stats], [m + h for m, h in stats], alpha=0.2)
            ax.set_title(f"{what}: held-out {title}")
    for ax in panels:
        ax.set_xlabel("RL step")
        ax.set_ylim(0, 1)  # both are rates in [0, 1]: a zoomed axis would make noise look like a trend
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def plot_diagnostics(curves: Curves, path: Path) -> dict[str, dict[str, float]]:
    """SDAR's gate and gap statistics and the invalid-turn rate over training (mean over seeds per step),
    plotted to ``path``; returns each arm's mean over steps and seeds of each :data:`DIAGNOSTICS` key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DIAGNOSTICS), figsize=(3.4 * len(DIAGNOSTICS), 3))
    means: dict[str, dict[str, float]] = {}
    colour = {arm: f"C{i}" for i, arm in enumerate(curves)}  # an arm keeps its colour in every panel
    for (key, title), axis in zip(DIAGNOSTICS, axes, strict=True):
        for arm, runs in curves.items():
            by_step: dict[int, list[float]] = {}
            for rows in runs.values():
                for r in rows:
                    if key in r:
                        by_step.setdefault(int(r["step"]), []).append(float(r[key]))
            if by_step:
                xs = sorted(by_step)
                axis.plot(xs, [sum(by_step[x]) / len(by_step[x]) for x in xs], label=arm, color=colour[arm])
                every = [v for vs in by_step.values() for v in vs]
                means.setdefault(arm, {})[key] = sum(every) / len(every)
        axis.set_title(title)
        axis.set_xlabel("RL step")
        axis.grid(alpha=0.3)
    labelled = [axis for axis in axes if axis.get_legend_handles_labels()[0]]
    if labelled:  # the panel that shows every arm (the invalid-turn rate)
        max(labelled, key=lambda axis: len(axis.get_legend_handles_labels()[0])).legend()
    save_figure(fig, path)
    return means


def diagnostics_table(means: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Markdown rows of :func:`plot_diagnostics`'s means."""
    lines = [
        "| arm | " + " | ".join(t for _, t in DIAGNOSTICS) + " |",
        "|---" * (len(DIAGNOSTICS) + 1) + "|",
    ]
    for arm, values in means.items():
        lines.append(
            f"| {arm} | " + " | ".join(f"{values[k]:.3f}" if k in values else "-" for k, _ in DIAGNOSTICS) + " |"
        )
    return lines
