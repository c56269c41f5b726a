"""How generate draws a sampled token: ``torch.multinomial`` (transformers' own sampling step) against
``policy._Sampler`` (inverse CDF, one uniform number a row), side by side in one run.

    .venv/bin/python bench/sampling.py [--model smollm2-135m-instruct] [--rows 8] [--prompt 900] [--new 128]
        [--threads 2] [--rounds 3]

Two measurements, each alternating the two ways ``--rounds`` times (medians printed, and their ratio):
the draw alone, on one decode step's logits of ``--rows`` rows (fp32, the model's vocabulary), and
``generate`` end to end (bf16 weights, ``--rows`` random prompts of 70-100% of ``--prompt`` tokens,
``--new`` tokens each at temperature 1, no stop token, transformers' KV cache in both arms).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt", type=int, default=900)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    import torch
    from transformers import LogitsProcessorList

    from sdar_train.policy import _Sampler, load_policy

    torch.set_num_threads(args.threads)
    policy = load_policy(args.model, torch.device("cpu"), dtype=torch.bfloat16)
    model = policy.model.eval()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn((args.rows, vocab), generator=gen) * 3
    ids = torch.zeros((args.rows, 1), dtype=torch.long)
    lengths = [args.prompt * 7 // 10 + (args.prompt * 3 // 10) * i // max(args.rows - 1, 1) for i in range(args.rows)]
    width = max(lengths)
    prompt = torch.full((args.rows, width), policy.pad_id, dtype=torch.long)
    mask = torch.zeros_like(prompt)
    for i, n in enumerate(lengths):  # left-padded, as generation batches are
        prompt[i, width - n :] = torch.randint(10, min(20000, vocab), (n,), generator=gen)
        mask[i, width - n :] = 1
    common = dict(
        input_ids=prompt,
        attention_mask=mask,
        max_new_tokens=args.new,
        min_new_tokens=args.new,
        pad_token_id=policy.pad_id,
        repetition_penalty=1.0,
        top_k=None,
        top_p=None,
    )
    ways = {
        "multinomial": (
            lambda: torch.multinomial(torch.softmax(logits, -1), 1),
            lambda: model.generate(**common, do_sample=True, temperature=1.0),
        ),
        "inverse CDF": (
            lambda: _Sampler(1.0, 1.0, 0, record=False)(ids, logits),
            lambda: model.generate(
                **common, do_sample=False, logits_processor=LogitsProcessorList([_Sampler(1.0, 1.0, 0, record=False)])
            ),
        ),
    }
    times: dict[tuple[str, str], list[float]] = {}
    with torch.no_grad():
        for draw, generate in ways.values():  # warm up
            draw()
            generate()
        for _ in range(args.rounds):
            for name, (draw, generate) in ways.items():
                t = time.perf_counter()
                for _ in range(20):
                    draw()
                times.setdefault((name, "draw"), []).append((time.perf_counter() - t) / 20)
                t = time.perf_counter()
                generate()
                times.setdefault((name, "generate"), []).append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.model}: {args.rows} rows, vocabulary {vocab}, prompts of {min(lengths)}-{width} tokens, "
          f"{args.new} new tokens, {args.threads} threads, median of {args.rounds}")  # fmt: skip
    print("| way | one draw | generate |\n|---|---|---|")
    for name in ways:
        print(f"| {name} | {med[(name, 'draw')] * 1e3:.2f} ms | {med[(name, 'generate')]:.2f} s |")
    draw_ratio = med[("multinomial", "draw")] / med[("inverse CDF", "draw")]
    gen_ratio = med[("multinomial", "generate")] / med[("inverse CDF", "generate")]
    print(f"multinomial / inverse CDF: draw {draw_ratio:.1f}x, generate {gen_ratio:.2f}x")


if __name__ == "__main__":
    main()
