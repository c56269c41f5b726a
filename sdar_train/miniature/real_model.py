"""SmolLM2-135M-Instruct through the suite on CPU: the premise zero-shot, a behaviour-cloned warm start,
and the premise again, one environment at a time. Resumable: each stage is skipped when its output
exists, and the warm start continues from its last checkpoint.

    python -m sdar_train.miniature.real_model --env searchqa --out runs/real     # docs/real_model/

Stages, each through the harness's own command lines (so each is also a command a user can type):

1. ``premise-zeroshot-{none,teacher}.json``: ``sdar_train.eval`` on the fixed held-out list, greedy,
   without and with the teacher's skill block (``--skills teacher``: the block before the chat text);
2. ``warmstart/``: ``python -m sdar_train --algo sft`` on the train split's expert demonstrations, LoRA r 16
   over a bf16 base, with ``--sft_skills_share`` of the episodes shown the teacher's prompt, and held-out
   evaluations along the way (``metrics.jsonl``);
3. ``premise-warm-{none,teacher}.json``: stage 1 on the warm start;
4. ``arms/<algo>-s<seed>/``: RL from the warm start (``--stages arms``): GRPO, SDAR and GRPO+OPSD with the
   paper's per-algorithm configs (``<env>_<algo>.yaml``), sized for a CPU (LoRA r 16 over a bf16 base, B x G,
   the per-environment response limit), one run per seed on the same task stream, greedy held-out evaluation
   every ``--rl_eval_every`` steps on a fixed list; ``arms/start-<model>.json`` is the warm start's evaluation
   on that list (step 0 of every curve: greedy, so it is the same for every seed). Runs resume from their
   last checkpoint, so the comparison continues over several sittings; each run is compared with the
   evaluation of the model its own ``config.json`` started from, so runs from another ``--warm`` stay honest:

       python -m sdar_train.miniature.real_model --env webshop --stages arms,report --train_reward return

5. ``report.md``: the premise table (success, return, format-valid, admissible, cut at the response
   limit, turns), the warm start's curve, and the arms' held-out table (95% intervals over seeds), curves
   (``curves.png``) and SDAR's diagnostics (``diagnostics.png``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdar_train.miniature.arms import (
    ArmRun,
    ArmRunFailed,
    arm_difference_table,
    behaviour_table,
    check_comparison,
    collect_curves,
    diagnostics_table,
    evaluation_at,
    goal_pairs,
    higher_lower,
    outcome_table,
    paired_goal_table,
    plot_curves,
    plot_diagnostics,
    run_arms,
)
from sdar_train.report import mean_interval

__all__ = [
    "SETTINGS",
    "ArmSettings",
    "EnvSettings",
    "arm_runs",
    "main",
    "heldout_eval_args",
    "premise_table",
    "warmstart_args",
]


@dataclass(frozen=True)
class EnvSettings:
    env_id: str
    config: str  # the harness's SFT config for this environment
    eval_split: str
    eval_episodes: int  # evenly spaced over the split's fixed order (sdar_envs.core.evaluation_tasks)
    max_response_tokens: int  # sized to the environment's actions; the paper's configs say 512
    steps: int
    tasks_per_step: int
    eval_every: int
    max_turns: int  # the environment's own turn limit (its max_steps default)

    @property
    def name(self) -> str:
        return self.config.removesuffix("_sft.yaml")


SETTINGS: dict[str, EnvSettings] = {
    "searchqa": EnvSettings("SDAR/SearchQA-v0", "searchqa_sft.yaml", "test", 200, 64, 40, 8, 20, 4),
    # 20 steps: the warm start RL starts from (format-valid, far from the expert: docs/real_model/)
    "webshop": EnvSettings("SDAR/WebShop-v0", "webshop_sft.yaml", "test", 100, 64, 20, 4, 20, 15),
    "alfworld": EnvSettings("SDAR/ALFWorld-v0", "alfworld_sft.yaml", "valid_unseen", 67, 48, 40, 4, 20, 50),
}
MODEL = "smollm2-135m-instruct"


def _log(msg: str) -> None:
    print(f"[real_model] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def _run(args: list[str]) -> None:
    _log("$ " + " ".join(args))
    subprocess.run([sys.executable, *args], check=True)


def heldout_eval_args(
    s: EnvSettings, model: str, episodes: int, out: Path, *, skills: str = "none", seed: int = 0
) -> list[str]:
    """``sdar_train.eval`` arguments for the greedy evaluation every stage reports: ``episodes`` tasks evenly
    spaced over ``s``'s held-out split, bf16, the environment's response limit, the report at ``out``."""
    return (
        ["--env", s.env_id, "--model", model, "--split", s.eval_split, "--episodes", str(episodes)]
        + ["--temperature", "0", "--dtype", "bfloat16", "--seed", str(seed)]
        + ["--max_response_tokens", str(s.max_response_tokens), "--skills", skills, "--out", str(out)]
    )


def _premise(s: EnvSettings, model: str, out: Path, tag: str) -> None:
    for skills in ("none", "teacher"):
        path = out / f"premise-{tag}-{skills}.json"
        if path.exists():
            continue
        _run(["-m", "sdar_train.eval", *heldout_eval_args(s, model, s.eval_episodes, path, skills=skills)])


def warmstart_args(
    s: EnvSettings,
    run: Path,
    *,
    lr: float = 2e-4,
    skills_share: float = 0.3,
    threads: int = 2,
    steps: int | None = None,
    tasks_per_step: int | None = None,
) -> list[str]:
    """The warm start's recipe: ``python -m sdar_train`` arguments cloning ``s``'s expert into ``run``
    (``steps`` and ``tasks_per_step``: the environment's unless shortened, as the recipe's test does)."""
    return (
        ["--config", s.config, "--model", MODEL, "--output_dir", str(run)]
        + ["--steps", str(steps or s.steps), "--tasks_per_step", str(tasks_per_step or s.tasks_per_step)]
        + ["--group_size", "1", "--lora_r", "16", "--lora_alpha", "32", "--bf16", "true", "--lr", str(lr)]
        # micro-batches of 2: activations of 8 rows x 900 tokens x 30 layers take ~15 GB on a CPU
        + ["--micro_batch_size", "2", "--max_response_tokens", str(s.max_response_tokens)]
        # an optimizer step every 4 turns: the RL configs' mini-batches (64-256 turns) would give cloning
        # one update per step, and 10 updates left SmolLM2 copying 'search[<your query>]' (docs/real_model/)
        + ["--mini_batch_size", "4"]
        + ["--sft_skills_share", str(skills_share), "--eval_every", str(s.eval_every)]
        + ["--eval_episodes", str(s.eval_episodes), "--save_every", "5", "--keep_checkpoints", "1"]
        + ["--cpu_threads", str(threads), "--progress", "false"]
    )


def _warm_start(s: EnvSettings, out: Path, lr: float, skills_share: float, threads: int) -> Path:
    run = out / "warmstart"
    final = run / "final"
    if (final / "config.json").exists():
        return final
    resume = (run / "checkpoints").is_dir()
    args = warmstart_args(s, run, lr=lr, skills_share=skills_share, threads=threads)
    _run(["-m", "sdar_train", *args, *(["--resume", "true"] if resume else [])])
    return final


@dataclass(frozen=True)
class ArmSettings:
    """The RL stage, sized for 2 CPU cores (the paper's values are in ``<env>_<algo>.yaml``)."""

    arms: tuple[str, ...] = ("grpo", "sdar", "opsd")
    seeds: tuple[int, ...] = (0, 1)
    # a step of B=1 x G=4 WebShop episodes (about 18 turns of 900-1,500 tokens) costs about 8 CPU-minutes with
    # SDAR's passes, so 20 steps and two 50-task evaluations fit the 3 CPU-hours per run
    steps: int = 20
    tasks_per_step: int = 1  # B
    group_size: int = 4  # G
    lr: float = 1e-4  # LoRA adapters: about 10x a full fine-tune's rate
    temperature: float = 1.0  # the reference's rollout temperature
    train_reward: str = "won"  # the reference's; "return" (the dense score) when the warm start rarely wins
    mini_batch_size: int = 16
    micro_batch_size: int = 2  # rows a forward: SmolLM2's activations are ~1.2 MB a token on a CPU
    generation_backend: str = "hf"  # vllm: faster on a GPU and on a bf16 CPU (the vLLM venv: make setup-vllm)
    skip_flat_groups: bool = False  # DAPO's filter: groups that all scored alike cost their rollout alone
    eval_every: int = 10
    eval_episodes: int = 50
    threads: int = 2
    parallel: int = 1

    def __post_init__(self) -> None:
        from sdar_train.errors import ConfigError

        check_comparison(self.arms, self.seeds, self.group_size, self.train_reward)
        if self.generation_backend not in ("hf", "vllm"):
            raise ConfigError(f"generation_backend must be hf or vllm, got {self.generation_backend!r}")
        for name in (
            "steps",
            "tasks_per_step",
            "mini_batch_size",
            "micro_batch_size",
            "eval_every",
            "eval_episodes",
            "threads",
            "parallel",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


def arm_runs(s: EnvSettings, a: ArmSettings, warm: str, out: Path) -> list[ArmRun]:
    """Every arm x seed from ``warm``, seeds outermost (a short budget still sees every arm)."""
    runs = []
    for seed in a.seeds:
        for arm in a.arms:
            run_dir = out / "arms" / f"{arm}-s{seed}"
            args = ["--config", f"{s.name}_{arm}.yaml", "--model", warm, "--output_dir", str(run_dir)]
            args += ["--seed", str(seed), "--steps", str(a.steps), "--tasks_per_step", str(a.tasks_per_step)]
            args += ["--group_size", str(a.group_size), "--lr", str(a.lr), "--temperature", str(a.temperature)]
            args += ["--train_reward", a.train_reward, "--lora_r", "16", "--lora_alpha", "32", "--bf16", "true"]
            args += ["--micro_batch_size", str(a.micro_batch_size), "--mini_batch_size", str(a.mini_batch_size)]
            args += ["--generation_backend", a.generation_backend]
            args += ["--skip_flat_groups", str(a.skip_flat_groups).lower()]
            args += ["--max_response_tokens", str(s.max_response_tokens), "--generation_batch_size", "32"]
            args += ["--eval_every", str(a.eval_every), "--eval_episodes", str(a.eval_episodes)]
            args += ["--eval_temperature", "0", "--save_every", "1", "--keep_checkpoints", "1"]
            args += ["--cpu_threads", str(a.threads), "--progress", "false"]
            runs.append(ArmRun(arm, seed, run_dir, tuple(args)))
    return runs


def start_path(out: Path, model: str) -> Path:
    """Where the greedy held-out evaluation of ``model``, as a start RL runs from, is kept."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_.") or "model"
    return out / "arms" / f"start-{slug}.json"


def _same_model(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    return a == b or (pa.exists() and pb.exists() and pa.resolve() == pb.resolve())


def start_evaluations(out: Path) -> list[dict[str, Any]]:
    """Every start evaluation in ``out/arms`` (``start*.json``) that names its model (``sdar_train.eval``
    writes ``model``); one that does not cannot be matched to a run, so it is left out."""
    from sdar_train.errors import ConfigError

    found = []
    for f in sorted((out / "arms").glob("start*.json")):
        try:
            found.append(json.loads(f.read_text()))
        except json.JSONDecodeError as e:  # a run cut while writing: name the file, delete it to evaluate again
            raise ConfigError(f"{f}: not a readable evaluation ({e}); delete it to evaluate that start again") from e
    return [r for r in found if "model" in r]


def start_of(starts: Sequence[dict[str, Any]], model: str) -> dict[str, Any] | None:
    """The evaluation of ``model`` among ``starts``, or None."""
    return next((r for r in starts if _same_model(str(r["model"]), model)), None)


def _arms(s: EnvSettings, a: ArmSettings, warm: str, out: Path) -> None:
    if start_of(start_evaluations(out), warm) is None:
        start = start_path(out, warm)
        start.parent.mkdir(parents=True, exist_ok=True)
        _run(["-m", "sdar_train.eval", *heldout_eval_args(s, warm, a.eval_episodes, start)])
    run_arms(arm_runs(s, a, warm, out), a.parallel)


def _run_model(run: ArmRun) -> str:
    """The model a run started from: its ``config.json``'s (a run resumed under another ``--warm`` keeps its
    own), else the one its arguments name."""
    config = run.run_dir / "config.json"
    if config.exists():
        return str(json.loads(config.read_text())["model"])
    return run.args[run.args.index("--model") + 1]


def _arms_report(s: EnvSettings, a: ArmSettings, warm: str, out: Path) -> list[str]:
    starts = start_evaluations(out)
    paired, unpaired = [], []
    for run in arm_runs(s, a, warm, out):
        if not (run.run_dir / "metrics.jsonl").exists():
            continue
        model = _run_model(run)
        start = start_of(starts, model)
        if start is None:
            unpaired.append(
                f"- {run.arm} seed {run.seed} started from `{model}`, which has no evaluation in "
                f"`{out / 'arms'}`: `python -m sdar_train.eval "
                f"{' '.join(heldout_eval_args(s, model, a.eval_episodes, start_path(out, model)))}`"
            )
        else:
            paired.append((run, start))
    if not paired:
        return ["", f"## RL from the warm start ({warm})", "", *unpaired] if unpaired else []
    curves = collect_curves(
        [(x.arm, x.seed, x.run_dir, {"eval_success": r["success"], "eval_return": r["return"]}) for x, r in paired]
    )
    plot_curves(curves, out / "curves.png", f"{s.env_id} {s.eval_split}")
    means = plot_diagnostics(curves, out / "diagnostics.png")
    lines = [
        "",
        f"## RL from the warm start ({warm})",
        "",
        f"Per arm the paper's config (`{s.name}_<algo>.yaml`) with B={a.tasks_per_step} x G={a.group_size}, "
        f"LoRA r 16 over bf16, lr {a.lr}, rollout temperature {a.temperature}, train reward `{a.train_reward}`, "
        f"{a.steps} steps. Held-out: {a.eval_episodes} {s.eval_split} tasks (fixed, evenly spaced), greedy; "
        f"95% t-intervals over seeds {list(a.seeds)} (a seed that has not reached step {a.steps} is left out).",
        "",
        *outcome_table(curves, a.steps),
    ]
    evaluated = [*range(a.eval_every, a.steps, a.eval_every), a.steps]  # the steps each run is evaluated after
    # the earlier evaluations too: runs continue over sittings, and every seed may have reached step 10 first
    for step in evaluated[:-1]:
        table = outcome_table(curves, step)
        if len(table) > 2:
            lines += ["", f"At step {step}, over the seeds evaluated there:", "", *table]
    lines += ["", "Held-out score (success) so far, per run:", ""]
    for arm, by_seed in curves.items():
        for seed, rows in by_seed.items():
            points = ", ".join(
                f"step {p['step']} {p['eval_return']:.3f} ({p['eval_success']:.2f})" for p in rows if "eval_return" in p
            )
            lines.append(f"- {arm} seed {seed}: {points} (last step logged: {max(int(p['step']) for p in rows)})")
    used = [r for r in starts if any(r is start for _, start in paired)]
    lines += ["", "Each run starts from its own `config.json`'s model; the greedy evaluations of those starts:", ""]
    for r in used:
        runs_from = ", ".join(f"{x.arm} seed {x.seed}" for x, start in paired if start is r)
        lines.append(
            f"- `{r['model']}` ({r.get('dtype', 'dtype not recorded')}): score {r['return']:.3f}, "
            f"success {r['success']:.2f}; start of {runs_from}"
        )
    lines += unpaired
    latest = [(x, start, found) for x, start in paired if (found := evaluation_at(x.run_dir)) is not None]
    start_rows = [(f"start `{r['model']}`" if len(used) > 1 else "start", "-", r) for r in used]
    lines += [
        "",
        "Each run's latest held-out evaluation against its start on the same goals (greedy, paired goal by goal):",
        "",
        *paired_goal_table((f"{x.arm}, step {step}", x.seed, start, end) for x, start, (step, end) in latest),
        "",
        "How the episodes of those evaluations went (what the policies do differently):",
        "",
        *behaviour_table(
            [*start_rows, *((f"{x.arm}, step {step}", x.seed, end) for x, _, (step, end) in latest)], s.max_turns
        ),
    ]
    by_run = {(x.arm, x.seed): x.run_dir for x, _ in paired}
    for step in reversed(evaluated):  # the end first
        table = arm_difference_table(by_run, "grpo", step)
        if len(table) > 2:
            lines += ["", f"Each arm against GRPO of the same seed at step {step}, goal by goal:", "", *table]
    return lines + [
        "",
        "### SDAR's diagnostics over training (mean over steps and seeds)",
        "",
        *diagnostics_table(means),
        "",
        "![held-out curves](curves.png)",
        "",
        "![diagnostics](diagnostics.png)",
    ]


def premise_table(out: Path) -> list[str]:
    """Markdown: one row per (model, prompt) evaluation found in ``out`` (``premise-{zeroshot,warm}-{none,
    teacher}.json``), then, per model, the teacher's prompt against the student's goal by goal (the same
    goals, greedy): what the skills add, with its 95% t-interval over goals. A line saying how to measure
    it when ``out`` has none (an RL run from a packaged warm start measures no premise of its own)."""
    rows = [
        "| model | prompt | episodes | success | mean return | format-valid turns | admissible turns | cut at the limit | turns per episode |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    paired = []
    for tag, name in (("zeroshot", "SmolLM2 zero-shot"), ("warm", "warm start")):
        found: dict[str, dict[str, Any]] = {}
        for skills, prompt in (("none", "student (no skills)"), ("teacher", "teacher (skills before the chat)")):
            path = out / f"premise-{tag}-{skills}.json"
            if not path.exists():
                continue
            r: dict[str, Any] = json.loads(path.read_text())
            found[skills] = r
            rows.append(
                f"| {name} | {prompt} | {r['episodes']} | {r['success']:.3f} | {r['return']:.3f} | "
                f"{1 - r['invalid_rate']:.3f} | {1 - r['inadmissible_rate']:.3f} | "
                f"{r.get('response_limit_rate', float('nan')):.3f} | {r['episode_length']:.2f} |"
            )
        if len(found) == 2 and (pairs := goal_pairs(found["none"], found["teacher"])):
            diffs = [teacher["return"] - student["return"] for student, teacher in pairs]
            m, h = mean_interval(diffs)
            higher, lower = higher_lower(diffs)
            changed = sum(student["actions"] != teacher["actions"] for student, teacher in pairs)
            paired.append(
                f"- {name}: the skills add {m:+.3f} ± {h:.3f} to the score over {len(pairs)} goals "
                f"(actions changed on {changed}; higher on {higher}, lower on {lower})"
            )
    if len(rows) == 2:
        return [f"Not measured in `{out}` (`--stages premise` measures it)."]
    if paired:
        rows += ["", "The teacher's prompt against the student's, goal by goal (95% over goals):", "", *paired]
    return rows


def _report(s: EnvSettings, out: Path, arms: list[str]) -> Path:
    lines = [f"# SmolLM2-135M-Instruct on {s.env_id}", "", "## The premise (greedy, the same tasks)", ""]
    lines += premise_table(out)
    metrics = out / "warmstart" / "metrics.jsonl"
    if metrics.exists():
        points = [json.loads(line) for line in metrics.read_text().splitlines()]
        curve = [p for p in points if "eval_success" in p]
        lines += ["", "## The warm start's held-out curve", "", "| step | success | mean return |", "|---|---|---|"]
        lines += [f"| {p['step']} | {p['eval_success']:.3f} | {p['eval_return']:.3f} |" for p in curve]
        losses = [p for p in points if "sft_loss" in p]
        if losses:
            wall = sum(p.get("time_s", 0.0) for p in losses) / 60
            lines += [
                "",
                f"{len(losses)} cloning steps, {wall:.0f} min; response NLL {losses[0]['sft_loss']:.3f} -> {losses[-1]['sft_loss']:.3f}.",
            ]
    lines += arms
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", choices=sorted(SETTINGS), default="searchqa")
    p.add_argument("--out", default="runs/real")
    p.add_argument("--lr", type=float, default=2e-4, help="the warm start's learning rate (LoRA)")
    p.add_argument("--skills_share", type=float, default=0.3, help="demonstrations shown the teacher's prompt")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process")
    p.add_argument("--stages", default="premise,warmstart,report", help="comma-separated subset (also: arms)")
    rl = ArmSettings()
    g = p.add_argument_group("RL from the warm start (stage arms)")
    g.add_argument("--warm", default=None, help="the model RL starts from (default: this run's warmstart/final)")
    g.add_argument("--arms", default=",".join(rl.arms), help="comma-separated RL algorithms")
    g.add_argument("--seeds", default=",".join(map(str, rl.seeds)), help="comma-separated seeds, one run each")
    g.add_argument("--rl_steps", type=int, default=rl.steps)
    g.add_argument("--rl_tasks_per_step", type=int, default=rl.tasks_per_step, help="B")
    g.add_argument("--rl_group_size", type=int, default=rl.group_size, help="G")
    g.add_argument("--rl_lr", type=float, default=rl.lr)
    g.add_argument("--rl_temperature", type=float, default=rl.temperature)
    g.add_argument("--train_reward", choices=("won", "return"), default=rl.train_reward)
    g.add_argument("--rl_mini_batch_size", type=int, default=rl.mini_batch_size)
    g.add_argument("--rl_micro_batch_size", type=int, default=rl.micro_batch_size, help="rows a forward")
    g.add_argument("--generation_backend", choices=("hf", "vllm"), default=rl.generation_backend)
    g.add_argument(
        "--skip_flat_groups",
        action="store_true",
        help="leave groups whose episodes all scored alike out of the passes and the update (DAPO's filter)",
    )
    g.add_argument("--rl_eval_every", type=int, default=rl.eval_every)
    g.add_argument("--rl_eval_episodes", type=int, default=rl.eval_episodes)
    g.add_argument("--parallel", type=int, default=rl.parallel, help="runs at once (cores = parallel x threads)")
    args = p.parse_args(argv)
    s = SETTINGS[args.env]
    out = Path(args.out) / args.env
    out.mkdir(parents=True, exist_ok=True)
    a = ArmSettings(
        arms=tuple(args.arms.split(",")),
        seeds=tuple(int(x) for x in args.seeds.split(",")),
        steps=args.rl_steps,
        tasks_per_step=args.rl_tasks_per_step,
        group_size=args.rl_group_size,
        lr=args.rl_lr,
        temperature=args.rl_temperature,
        train_reward=args.train_reward,
        mini_batch_size=args.rl_mini_batch_size,
        micro_batch_size=args.rl_micro_batch_size,
        generation_backend=args.generation_backend,
        skip_flat_groups=args.skip_flat_groups,
        eval_every=args.rl_eval_every,
        eval_episodes=args.rl_eval_episodes,
        threads=args.threads,
        parallel=args.parallel,
    )
    warm = args.warm or str(out / "warmstart" / "final")
    stages = set(args.stages.split(","))
    if "premise" in stages:
        _premise(s, MODEL, out, "zeroshot")
    if "warmstart" in stages:
        final = _warm_start(s, out, args.lr, args.skills_share, args.threads)
        _premise(s, str(final), out, "warm")
    if "arms" in stages:
        try:
            _arms(s, a, warm, out)
        except ArmRunFailed as failed:  # already logged with its exit status; one line, no traceback
            print(f"real_model: {failed}", file=sys.stderr)
            return 1
    _log(f"report: {_report(s, out, _arms_report(s, a, warm, out))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
