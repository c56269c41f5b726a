"""Where one micro-batch's time goes on this CPU: a no-grad forward (what the teacher and reference passes
cost a row) against the update's forward and backward (LoRA r 16 over the bf16 base, bf16 autocast, as the
trainer runs SmolLM2 on a CPU), split by operator with ``torch.profiler``; and transformers' eager attention against SDPA (the
default) in the no-grad forward. It says why the no-grad passes stay about
a quarter of a real-model SDAR step (issue 28): a LoRA update costs only a few forwards (the frozen base
needs no weight gradients), and a large share of both is attention, which no other kernel does faster.

    .venv/bin/python bench/update_anatomy.py [--model smollm2-135m-instruct] [--rows 2] [--tokens 400 800 1400]
        [--response 40] [--repeats 3] [--threads 2]

Per row length: the median of ``--repeats`` timings (after a warm-up) of the no-grad forward and of the
update, their ratio, and each one's share of profiled CPU time in attention (SDPA's kernels, forward and
backward), in matrix products, and in everything else; attention's backward against its forward in the
update; and the no-grad forward's time with eager attention over its time with SDPA.
Ratios within one run are what to compare: timings on a shared machine drift.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # `python bench/x.py` puts bench/ first on the path, not the root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._timing import median_time

ATTENTION = ("scaled_dot_product", "flash_attention")
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")


def _score(model: torch.nn.Module, ids: torch.Tensor, keep: torch.Tensor) -> None:
    with torch.no_grad():
        model(input_ids=ids, logits_to_keep=keep, use_cache=False).logits.float().log_softmax(-1)


def _update(model: torch.nn.Module, ids: torch.Tensor, keep: torch.Tensor) -> None:
    from peft.helpers import disable_input_dtype_casting

    with torch.autocast("cpu", dtype=torch.bfloat16), disable_input_dtype_casting(model):
        logits = model(input_ids=ids, logits_to_keep=keep, use_cache=False).logits
    torch.log_softmax(logits.float(), -1)[..., 0].mean().backward()
    model.zero_grad(set_to_none=True)


def operator_shares(fn: Callable[[], Any]) -> dict[str, float]:
    """Shares of ``fn``'s self CPU time in attention, matrix products and the rest (one profiled call)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    total, parts = 0.0, {"attention": 0.0, "attention backward": 0.0, "matmul": 0.0}
    for e in prof.key_averages():
        t = e.self_cpu_time_total
        total += t
        if any(a in e.key for a in ATTENTION):
            parts["attention backward" if "backward" in e.key else "attention"] += t
        elif e.key in MATMUL:
            parts["matmul"] += t
    shares = {k: v / total for k, v in parts.items()}
    shares["other"] = 1.0 - sum(shares.values())
    return shares


def eager_time(model: torch.nn.Module, ids: torch.Tensor, keep: torch.Tensor, repeats: int) -> float:
    """The no-grad forward's time with transformers' eager attention; ``model`` is left on SDPA (the default)."""
    model.set_attn_implementation("eager")  # type: ignore[operator]
    try:
        return median_time(partial(_score, model, ids, keep), repeats)
    finally:
        model.set_attn_implementation("sdpa")  # type: ignore[operator]


def _models(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the plain bf16 model: the merged copy the teacher pass runs and the reference's base; LoRA r 16 over
    it, fp32 adapters with nonzero B, as the trainer's update runs)."""
    from peft import LoraConfig, get_peft_model

    from sdar_train.policy import load_policy

    plain = load_policy(name, torch.device("cpu"), dtype=torch.bfloat16).model.eval()
    lora = load_policy(name, torch.device("cpu"), dtype=torch.bfloat16).model
    lora = get_peft_model(lora, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    for n, p in lora.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()
            if "lora_B" in n:  # B starts at 0; a trained adapter does not
                torch.nn.init.normal_(p, std=0.01)
    return plain, lora.train()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rows", type=int, default=2, help="rows a micro-batch (the RL runs': 2)")
    p.add_argument("--tokens", type=int, nargs="+", default=[400, 800, 1400], help="row lengths to measure")
    p.add_argument("--response", type=int, default=40, help="positions whose logits are kept (the response)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    plain, lora = _models(args.model)
    print(
        f"{args.model}, {args.rows} rows a micro-batch, logits for the last {args.response} positions, {args.threads} threads\n"
    )
    print(
        "| tokens a row | no-grad forward s | update s | update / forward | attention: forward's share | "
        "update's share (its backward) | attention in the update: backward / forward | "
        "matmul: forward's / update's share | no-grad forward, eager / SDPA attention |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for tokens in args.tokens:
        ids = torch.randint(0, plain.config.vocab_size, (args.rows, tokens))
        keep = torch.arange(tokens - args.response, tokens)
        score, update = partial(_score, plain, ids, keep), partial(_update, lora, ids, keep)
        t_score, t_update = median_time(score, args.repeats), median_time(update, args.repeats)
        s, u = operator_shares(score), operator_shares(update)
        eager = eager_time(plain, ids, keep, args.repeats) / t_score  # SDPA's time is t_score's, not measured again
        print(
            f"| {tokens} | {t_score:.3f} | {t_update:.3f} | {t_update / t_score:.2f} | {s['attention']:.0%} | "
            f"{u['attention'] + u['attention backward']:.0%} ({u['attention backward']:.0%}) | "
            f"{u['attention backward'] / u['attention']:.2f} | {s['matmul']:.0%} / {u['matmul']:.0%} | {eager:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
