"""``make demo``: a short SDAR run on WebShop from the packaged warm start, held-out score before and after.

    python -m sdar_train.miniature.demo --out runs/demo            # --algo grpo: the same with GRPO
    python -m sdar_train.miniature.demo --real --out runs/demo-real  # make demo-real: SmolLM2-135M-Instruct

The warm start (``sdar_train/miniature/warmstart/``: a ~1.4M-parameter Qwen2 behaviour-cloned by ``python -m
sdar_train.miniature.replicate --careless vague --careful_without_skills 0.4``, its recipe and sha256 beside it)
has a planted careless habit that the packaged WebShop skills correct: without skills (the student) it
mostly searches the product without the attributes the instruction names and buys without choosing
options; with skills (the SDAR teacher) it searches the whole instruction and chooses options. It is
checked against its sha256, evaluated greedily on 100 held-out WebShop test goals, trained for 6 steps
on train goals (rollouts at temperature 0.5, the teacher sees the skills), and evaluated again on the
same goals. Measured on seeds 0, 1, 2 (docs/replication/demo/README.md): greedy score 0.225 before,
+0.136, +0.104, +0.087 after 6 SDAR steps; the teacher's own score is 0.359.

``--real`` runs the same on a real model: SmolLM2-135M-Instruct's WebShop warm start, packaged as a LoRA
adapter over the wheel's base (``sdar_train/miniature/warmstart_smollm2_webshop/``, the model RL starts from in
docs/real_model/), with the real-model RL settings (``real_model.arm_runs``: the paper's WebShop config, B=1 x
G=4, LoRA r 16 over bf16, dense score as the reward), fewer steps and goals. On 2 cores one such step costs
minutes and one held-out goal about 15 s, so what fits in a demo's minutes is the whole pipeline on a real
model, not a change larger than the evaluation's noise (docs/real_model/README.md has the numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdar_train.config import ALGORITHMS
from sdar_train.miniature.packaged_warmstart import check_warmstart

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo")
    # The defaults are the T 0.5 miniature's recipe (docs/REPLICATION.md), cut to fit about 5 minutes on
    # 2 cores; greedy evaluation on 100 goals so that before and after are an exact paired comparison.
    p.add_argument("--algo", default="sdar", choices=list(ALGORITHMS), help="the algorithm (sdar_train.ALGORITHMS)")
    p.add_argument("--real", action="store_true", help="the real model: SmolLM2-135M-Instruct's warm start")
    p.add_argument("--steps", type=int, default=None, help="RL steps (default 6; --real: 2)")
    p.add_argument(
        "--episodes", type=int, default=None, help="held-out test goals, before and after (default 100; --real: 10)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks_per_step", type=int, default=None, help="B (default 4; --real: 1, with G=4)")
    p.add_argument("--rl_lr", type=float, default=1e-4, help="learning rate")
    p.add_argument("--rl_temperature", type=float, default=None, help="rollout temperature (default 0.5; --real: 1.0)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--eval_temperature", type=float, default=0.0, help="evaluation temperature (0: greedy)")
    p.add_argument(
        "--warmstart",
        default=None,
        help="a warm-start folder of your own (e.g. runs/replicate/warmstart; --real: a model or LoRA adapter folder); "
        "default: the packaged one, sha256-checked",
    )
    args = p.parse_args(argv)
    defaults = (
        {"steps": 2, "episodes": 10, "rl_temperature": 1.0, "tasks_per_step": 1}
        if args.real
        else {"steps": 6, "episodes": 100, "rl_temperature": 0.5, "tasks_per_step": 4}
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.real:
        from sdar_train.errors import ConfigError

        try:
            return _real(args)
        except ConfigError as e:  # e.g. --algo sft: the real demo compares RL arms only
            p.error(str(e))
    import torch

    from sdar_train.__main__ import main as train
    from sdar_train.miniature.replicate import ReplicateConfig, arm_args, evaluate_policy
    from sdar_train.policy import load_policy

    warm = Path(args.warmstart) if args.warmstart else check_warmstart()
    cfg = ReplicateConfig(
        out=args.out,
        eval_episodes=args.episodes,
        rl_steps=args.steps,
        eval_every=args.steps,
        **{k: getattr(args, k) for k in ("tasks_per_step", "rl_lr", "rl_temperature", "threads", "eval_temperature")},
    )
    torch.set_num_threads(cfg.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    before = evaluate_policy(load_policy(str(warm), torch.device("cpu")), cfg, seed=args.seed)
    (out / "before.json").write_text(json.dumps(before, indent=2))
    print(
        f"[demo] warm start on {before['episodes']} held-out WebShop test goals: "
        f"success {before['success']:.2f}, score {before['return']:.3f}",
        file=sys.stderr,
        flush=True,
    )
    run = out / args.algo
    code = train([*arm_args(cfg, args.algo, args.seed, warm, run), "--overwrite", "true", "--progress", "true"])
    if code:
        return code
    after = json.loads((run / "eval.json").read_text())
    return _summarise(args, out, before, after)


def _real(args: argparse.Namespace) -> int:
    """The demo on SmolLM2-135M-Instruct: the packaged adapter, evaluated, trained and evaluated again through
    the harness's own command lines (the same the real-model comparison runs)."""
    from sdar_train.__main__ import main as train
    from sdar_train.eval import main as evaluate
    from sdar_train.miniature.packaged_warmstart import REAL_WARMSTART
    from sdar_train.miniature.real_model import SETTINGS, ArmSettings, arm_runs, heldout_eval_args

    warm = args.warmstart or str(check_warmstart(REAL_WARMSTART))
    s = SETTINGS["webshop"]
    a = ArmSettings(
        arms=(args.algo,),
        seeds=(args.seed,),
        steps=args.steps,
        tasks_per_step=args.tasks_per_step,
        lr=args.rl_lr,
        temperature=args.rl_temperature,
        train_reward="return",  # the warm start buys no exact target: 10 x won would give no gradient
        eval_every=args.steps,
        eval_episodes=args.episodes,
        threads=args.threads,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    before_args = heldout_eval_args(s, warm, args.episodes, out / "before.json", seed=args.seed)
    code = evaluate([*before_args, "--temperature", str(args.eval_temperature)])  # (the last value given wins)
    if code:
        return code
    before = json.loads((out / "before.json").read_text())
    (run,) = arm_runs(s, a, warm, out)
    code = train([*run.args, "--overwrite", "true", "--progress", "true"])
    if code:
        return code
    after = json.loads((run.run_dir / "eval.json").read_text())
    return _summarise(args, out, before, after, model="SmolLM2-135M-Instruct")


def _summarise(
    args: argparse.Namespace, out: Path, before: dict[str, Any], after: dict[str, Any], model: str = "the tiny model"
) -> int:
    """The before/after table, ``summary.json`` and ``demo.png``."""
    from sdar_train.report import write_before_after_plot

    rows = [("warm start", before), (f"after {args.steps} {args.algo.upper()} steps", after)]
    print(
        f"\n{model}, held-out WebShop test goals: {before['episodes']}, temperature {before['temperature']}, seed {args.seed}"
    )
    print(f"{'policy':<24}{'success':>9}{'score':>9}{'invalid':>9}")
    for name, r in rows:
        print(f"{name:<24}{r['success']:>9.2f}{r['return']:>9.3f}{r['invalid_rate']:>9.2f}")
    (out / "summary.json").write_text(
        json.dumps({name: {k: r[k] for k in ("success", "return", "invalid_rate")} for name, r in rows}, indent=2)
    )
    title = f"{model}: {before['episodes']} held-out WebShop test goals, the same before and after (T {before['temperature']}, seed {args.seed})"
    print(f"plot: {write_before_after_plot(rows, out / 'demo.png', title)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
