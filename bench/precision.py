"""fp32 against bf16 on this machine, side by side, per model: what ``--bf16`` left unset chooses on a CPU
(``sdar_train/precision.py``) rests on these ratios.

    .venv/bin/python bench/precision.py [--models tiny smollm2-135m-instruct] [--rows 4] [--tokens 384]
        [--repeats 3]

Per model and set-up, the median of ``--repeats`` timings (after one warm-up) of:

- **train**: forward + backward + AdamW over ``rows x tokens`` (logits for the last 64 positions, as the
  trainer computes only the response's), full fine-tuning; fp32, then bf16 autocast over fp32 weights
  (what ``--bf16 true`` runs);
- **score**: a no-grad forward of the same rows (the teacher, reference and old-policy passes); fp32
  weights, then bf16 weights (what LoRA's frozen base and ``eval --dtype bfloat16`` use).

Printed: seconds and the fp32 / bf16 ratio (above 1: bf16 is faster), and what ``--bf16`` unset chooses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # `python bench/x.py` puts bench/ first on the path, not the root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._timing import median_time


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state  # type: ignore[operator]
        logits = model.get_output_embeddings()(hidden[:, -64:])  # type: ignore[operator]
        loss = torch.log_softmax(logits.float(), -1)[..., 0].mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@torch.no_grad()
def _score(model: torch.nn.Module, ids: torch.Tensor) -> None:
    hidden = model.get_decoder()(input_ids=ids).last_hidden_state  # type: ignore[operator]
    model.get_output_embeddings()(hidden[:, -64:]).float().log_softmax(-1)  # type: ignore[operator]


def bench_model(name: str, rows: int, tokens: int, repeats: int) -> dict[str, float]:
    """Median seconds of ``train_fp32``, ``train_bf16``, ``score_fp32``, ``score_bf16``."""
    from functools import partial

    from sdar_train.policy import load_policy

    ids = torch.randint(0, 1000, (rows, tokens))
    out: dict[str, float] = {}
    for tag, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = load_policy(name, torch.device("cpu")).model.train()  # fp32 master weights
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        out[f"train_{tag}"] = median_time(partial(_train_step, model, opt, ids, dtype == torch.bfloat16), repeats)
        out[f"score_{tag}"] = median_time(partial(_score, model.to(dtype).eval(), ids), repeats)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m-instruct"])
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--tokens", type=int, default=384)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from sdar_train.models import resolve_model_path
    from sdar_train.precision import choose_bf16, cpu_has_native_bf16, model_width

    print(
        f"CPU native bf16 (AVX512-BF16 or AMX): {cpu_has_native_bf16()}; {args.threads} threads; {args.rows} x {args.tokens} tokens\n"
    )
    print(
        "| model | width | train fp32 s | train bf16 s | fp32/bf16 | score fp32 s | score bf16 s | fp32/bf16 | --bf16 unset chooses |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        t = bench_model(name, args.rows, args.tokens, args.repeats)
        width = model_width(resolve_model_path(name))
        chosen, why = choose_bf16(None, cuda=False, model=name)
        tf, tb, sf, sb = t["train_fp32"], t["train_bf16"], t["score_fp32"], t["score_bf16"]
        print(
            f"| {name} | {width} | {tf:.3f} | {tb:.3f} | {tf / tb:.2f} | {sf:.3f} | {sb:.3f} | {sf / sb:.2f} | "
            f"{'bf16' if chosen else 'fp32'} ({why}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
