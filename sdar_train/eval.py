"""Deterministic evaluation of a policy on an environment: a fixed task list (N tasks evenly spaced over
the split's fixed order, so every task type is represented; all of them by default), fixed seeds,
temperature 0.4 by default (the reference's for ALFWorld and WebShop; Search-QA evaluates greedy, 0);
success per task type; JSON out.

    python -m sdar_train.eval --env SDAR/ALFWorld-v0 --model runs/sdar/final --split valid_unseen --episodes 134
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from sdar_envs import EnvPool, response_tokens
from sdar_envs.core import evaluation_tasks
from sdar_train.errors import ConfigError
from sdar_train.generation import Generator, HFGenerator, Sampling, make_generator
from sdar_train.models import resolve_model_path
from sdar_train.policy import Policy, PromptCodec, load_policy
from sdar_train.precision import choose_bf16
from sdar_train.report import mean_interval
from sdar_train.rollout import PromptSpec, collect_rollout

__all__ = ["evaluate", "evaluate_repeats", "main", "print_report", "write_report"]


def evaluate(
    policy: Policy,
    env_id: str,
    *,
    env_kwargs: dict[str, Any] | None = None,
    episodes: int = 0,
    temperature: float = 0.4,
    seed: int = 0,
    max_response_tokens: int = 0,
    batch_size: int = 64,
    env_workers: int = 0,
    generator: Generator | None = None,
    prompts: PromptSpec | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Play ``episodes`` tasks (0: all) once each; returns a report with per-type success. ``generator``:
    the generation back-end (default: HF ``generate`` on ``policy``). ``prompts``: the policy's prompt
    (default: 2,048 tokens, no skills); with ``student_skills`` and a ``memory`` the policy sees skills in
    its own prompt: at the start of the user message (``student_placement="in_user"``, Skill-GRPO's
    with-skills evaluation) or before the chat text (``"before_chat"``: the SDAR teacher's prompt, so the
    report measures the teacher)."""
    spec = prompts or PromptSpec()
    if max_response_tokens <= 0:  # the environment's own limit, sized to its actions
        max_response_tokens = response_tokens(env_id)
    generator = generator or HFGenerator(policy, batch_size)
    sampling = Sampling(max_response_tokens, temperature, 1.0, tuple(policy.stop_ids))
    kwargs = dict(env_kwargs or {})
    with EnvPool(env_id, 1, num_workers=0, env_kwargs=kwargs) as probe:
        task_ids = probe.call("task_ids")[0]
    task_ids = evaluation_tasks(task_ids, episodes)  # evenly spaced over the fixed order: all task types show up
    tok = policy.tokenizer
    import sys

    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(task_ids),
        desc=f"evaluating {len(task_ids)} episodes",
        unit="episode",
        disable=not (progress and sys.stderr.isatty()),
    )

    def on_turn(live: int) -> None:  # episodes finish at different turns: the bar counts finished ones
        bar.update(len(task_ids) - live - bar.n)

    with EnvPool(env_id, len(task_ids), num_workers=env_workers, env_kwargs=kwargs) as pool:
        rollout = collect_rollout(
            pool,
            env_id,
            task_ids,
            1,
            codec=PromptCodec(tok),
            generate=lambda prompts, s: generator(prompts, s, sampling),
            seed=seed,
            prompts=spec,
            on_turn=on_turn,
        )
    bar.close()
    # an episode whose environment failed is left out of every rate and listed (evaluations repeat
    # exactly, so a failure is a fact about the environment to report, not a loss to count)
    rollout, lost = rollout.without_failed(min_group=1)
    per_type: dict[str, list[bool]] = defaultdict(list)
    for ep in rollout.episodes:
        per_type[ep.task_type].append(ep.won)
    metrics = rollout.metrics()
    stops = set(policy.stop_ids)
    # a reply cut at the limit never said it was done: a model that rambles (SmolLM2 zero-shot) shows here
    at_limit = [len(r.response_ids) >= max_response_tokens and r.response_ids[-1] not in stops for r in rollout.samples]
    return {
        "env": env_id,
        "env_kwargs": kwargs,
        "episodes": len(rollout.episodes),
        "temperature": temperature,
        "seed": seed,
        "skills_in_prompt": spec.student_skills and spec.memory is not None,
        "success": sum(ep.won for ep in rollout.episodes) / max(len(rollout.episodes), 1),
        "return": sum(ep.env_return for ep in rollout.episodes) / max(len(rollout.episodes), 1),
        "per_task_type": {k: {"episodes": len(v), "success": sum(v) / len(v)} for k, v in sorted(per_type.items())},
        **{k: metrics[k] for k in ("invalid_rate", "inadmissible_rate", "episode_length")},
        "response_limit_rate": sum(at_limit) / max(len(at_limit), 1),
        "response_tokens": metrics["response_tokens"],
        "episodes_failed": len(lost),
        "failed": [{"task_id": e.task_id, "cause": e.failed} for e in lost],
        "results": [
            {
                "task_id": e.task_id,
                "task_type": e.task_type,
                "won": e.won,
                "return": e.env_return,
                "turns": e.turns,
                "truncated": e.truncated,
                "invalid": e.invalid,
                "actions": e.actions,
            }
            for e in rollout.episodes
        ],
    }


def evaluate_repeats(policy: Policy, env_id: str, *, repeats: int = 1, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """``repeats`` seeded passes (seeds ``seed``, ``seed + 1``, ...) of :func:`evaluate` over the same task
    list: the mean of each rate over the passes and, for success and return overall and per task type,
    the half-width of a 95% t-interval (avg@k, as published numbers should come). One pass: evaluate's
    report unchanged. ``passes`` keeps each pass's report."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    passes = [evaluate(policy, env_id, seed=seed + r, **kwargs) for r in range(repeats)]
    if repeats == 1:
        return passes[0]
    first = passes[0]
    report: dict[str, Any] = {k: first[k] for k in ("env", "env_kwargs", "episodes", "temperature", "skills_in_prompt")}
    report.update(seed=seed, repeats=repeats, seeds=[seed + r for r in range(repeats)])
    for key in ("success", "return"):
        report[key], report[f"{key}_ci95"] = mean_interval([p[key] for p in passes])
    for key in ("invalid_rate", "inadmissible_rate", "episode_length", "response_limit_rate", "response_tokens"):
        report[key] = sum(p[key] for p in passes) / repeats
    report["per_task_type"] = {}
    for task_type, row in first["per_task_type"].items():
        # (a pass whose episodes of a type all failed has no row for it)
        mean, half = mean_interval(
            [p["per_task_type"][task_type]["success"] for p in passes if task_type in p["per_task_type"]]
        )
        report["per_task_type"][task_type] = {"episodes": row["episodes"], "success": mean, "success_ci95": half}
    report["episodes_failed"] = sum(p.get("episodes_failed", 0) for p in passes)
    report["passes"] = passes
    return report


def write_report(path: Path | str, report: dict[str, Any]) -> Path:
    """Write ``report`` as JSON to ``path`` whole or not at all: it is written beside it and renamed into
    place, so a killed or failed write leaves the previous file (a start evaluation RL runs are paired
    with, a curve's point) as it was, never half of a new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def print_report(report: dict[str, Any], title: str = "evaluation") -> None:
    console = Console()
    # the heading on its own line: as a table title it wraps into the table's narrow width
    repeats = report.get("repeats", 1)
    console.print(
        f"{title}: {report['env']} {report['env_kwargs']}, {report['episodes']} episodes, T={report['temperature']}"
        + (
            f", avg@{repeats} (mean ± 95% over seeds {report['seeds'][0]}-{report['seeds'][-1]})" if repeats > 1 else ""
        ),
        highlight=False,
    )

    def cell(row: dict[str, Any]) -> str:
        return f"{row['success']:.1%}" + (f" ± {row['success_ci95']:.1%}" if "success_ci95" in row else "")

    table = Table()
    for col in ("task type", "episodes", "success"):
        table.add_column(col, justify="left" if col == "task type" else "right")
    for k, v in report["per_task_type"].items():
        table.add_row(k, str(v["episodes"]), cell(v))
    table.add_row("all", str(report["episodes"]), cell(report), style="bold")
    console.print(table)
    if "response_limit_rate" in report:
        console.print(
            f"mean return {report['return']:.3f}; turns: {report['invalid_rate']:.1%} break the format, "
            f"{report['inadmissible_rate']:.1%} not admissible, {report['response_limit_rate']:.1%} cut at the "
            f"response limit; {report['episode_length']:.1f} turns per episode"
            + ("; skills in the prompt" if report.get("skills_in_prompt") else ""),
            highlight=False,
        )
    if report.get("episodes_failed"):
        console.print(
            f"[bold red]{report['episodes_failed']} episode(s) failed (their environment raised or its worker "
            "died) and are left out of the rates above; the report's 'failed' lists them with the cause[/]"
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="SDAR/ALFWorld-v0")
    p.add_argument(
        "--model",
        required=True,
        help="a saved model folder, a hub name available offline, a .gguf file, smollm2-135m-instruct or tiny",
    )
    p.add_argument("--split", default=None, help="the env's split (ALFWorld: valid_unseen; Search-QA: test)")
    p.add_argument(
        "--env_kwargs",
        "--env-kwargs",
        dest="env_kwargs",
        default="{}",
        help='more keyword arguments for gymnasium.make, as JSON (e.g. \'{"observation_mode": "text_rich"}\' for '
        "a WebShop model trained on it); --split and --max_turns win over the same keys here",
    )
    p.add_argument("--episodes", type=int, default=0, help="N tasks evenly spaced over the split (0: all)")
    # the trainer's spelling (--max_turns) first; the dashed one still works
    p.add_argument("--max_turns", "--max-turns", dest="max_turns", type=int, default=None)
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature, 0: greedy (default: the env's reference, 0.4; Search-QA 0)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="seeded passes over the same tasks (seeds seed..seed+k-1): mean and 95%% interval (avg@k)",
    )
    p.add_argument("--max_prompt_tokens", "--max-prompt-tokens", dest="max_prompt_tokens", type=int, default=2048)
    p.add_argument(
        "--max_response_tokens",
        "--max-response-tokens",
        dest="max_response_tokens",
        type=int,
        default=0,
        help="tokens generated per turn (0: the environment's own, sized to its actions; the paper's configs say 512)",
    )
    p.add_argument("--env_workers", "--env-workers", dest="env_workers", type=int, default=0)
    p.add_argument(
        "--backend", choices=("hf", "vllm"), default="hf", help="generation back-end (vllm: the optional extra)"
    )
    p.add_argument(
        "--skills",
        choices=("none", "teacher", "student"),
        default="none",
        help="skills in the prompt: teacher (the SDAR teacher's prompt: the block before the chat text) or "
        "student (Skill-GRPO's: at the start of the user message); from the env's seed banks, keyword retrieval",
    )
    p.add_argument("--skills_k", "--skills-k", dest="skills_k", type=int, default=3)
    p.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="weights for generation; auto: bfloat16 on GPUs, and on CPUs with native bf16 for models at least "
        "512 wide (about 2x faster sampling there; sdar_train/precision.py), else float32",
    )
    p.add_argument("--out", default=None, help="JSON report path")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    try:  # before the model: a typo costs no GGUF conversion
        kwargs: dict[str, Any] = json.loads(args.env_kwargs)
    except json.JSONDecodeError as e:
        p.error(f"--env_kwargs is not JSON ({e}): {args.env_kwargs!r}")
    if not isinstance(kwargs, dict):
        p.error(f"--env_kwargs must be a JSON object, got {args.env_kwargs!r}")
    try:
        model_path = resolve_model_path(args.model)  # once: a GGUF is hashed (and converted) here
    except ConfigError as e:
        p.error(str(e))
    if args.split:
        kwargs["split"] = args.split
    if args.max_turns:
        kwargs["max_steps"] = args.max_turns
    if args.temperature is None:
        from sdar_envs import reference_training

        args.temperature = reference_training(args.env)["eval_temperature"]
    torch.manual_seed(args.seed)
    if args.dtype == "auto":
        bf16, why = choose_bf16(None, cuda=torch.cuda.is_available(), model=model_path)
        args.dtype = "bfloat16" if bf16 else "float32"
        print(f"[sdar_train.eval] weights in {args.dtype} ({why})", file=sys.stderr, flush=True)
    policy = load_policy(
        model_path, torch.device("cuda" if torch.cuda.is_available() else "cpu"), dtype=getattr(torch, args.dtype)
    )
    memory = None
    if args.skills != "none":
        from sdar_train.rollout import default_memory

        memory = default_memory(args.env, "keyword", args.seed, None)
    generator = make_generator(
        args.backend,
        policy,
        model=model_path,
        max_model_len=args.max_prompt_tokens + (args.max_response_tokens or response_tokens(args.env)),
        bf16=args.dtype == "bfloat16",  # vLLM computes in the dtype HF's weights were loaded in
        seed=args.seed,
    )
    try:
        report = evaluate_repeats(
            policy,
            args.env,
            repeats=args.repeats,
            env_kwargs=kwargs,
            episodes=args.episodes,
            temperature=args.temperature,
            seed=args.seed,
            max_response_tokens=args.max_response_tokens,
            env_workers=args.env_workers,
            generator=generator,
            prompts=PromptSpec(
                args.max_prompt_tokens,
                args.max_prompt_tokens + 1024,  # skills are added within this, never cutting the prompt
                memory=memory,
                skills_k=args.skills_k,
                student_skills=memory is not None,
                student_placement="before_chat" if args.skills == "teacher" else "in_user",
            ),
            progress=True,
        )
    finally:
        generator.close()
    # what was evaluated, as given and as loaded: two copies of one policy (an fp32 export and a bf16
    # adapter) can act differently under greedy decoding, so a result must say which it measured
    report = {"model": args.model, "dtype": args.dtype, **report}
    print_report(report)
    if args.out:
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
