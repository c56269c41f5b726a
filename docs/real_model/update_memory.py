"""Peak resident memory of one LoRA update micro-batch of SmolLM2-135M-Instruct on CPU (docs/real_model/README.md).

One forward and backward, under bf16 autocast over a bf16 base with LoRA r 16 on every linear layer, of ``rows``
rows of ``length`` tokens (one of them left-padded by ``pad``), logits kept for the last 65 positions as the
trainer keeps them. Each set-up runs in a fresh process, so each peak (``ru_maxrss``) is its own.

    python docs/real_model/update_memory.py            # the four set-ups of the README's table
    python docs/real_model/update_memory.py sdpa 200 2 1400 checkpointing
"""

from __future__ import annotations

import resource
import subprocess
import sys

SETUPS = (
    ("sdpa", 200, 2, 1400, ""),  # the trainer's default attention and the real-model RL micro-batch
    ("sdpa", 200, 2, 1400, "checkpointing"),  # --gradient_checkpointing true
    ("sdpa", 0, 1, 1400, ""),  # --micro_batch_size 1
    ("eager", 200, 2, 1400, ""),  # attention weights materialised: what SDPA avoids
)


def measure(attention: str, pad: int, rows: int, length: int, checkpointing: bool) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sdar_train.models import resolve_model_path

    torch.set_num_threads(1)
    folder = resolve_model_path("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation=attention)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    ids = torch.randint(100, 40_000, (rows, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), logits_to_keep=65
        ).logits
    logits.float().log_softmax(-1)[..., 5].mean().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return f"{loaded:.2f} {peak:.2f}"


def main() -> None:
    if len(sys.argv) > 1:
        attention, pad, rows, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        print(measure(attention, pad, rows, length, sys.argv[5:] == ["checkpointing"]))
        return
    print("| attention | rows x tokens | set-up | loaded (GB) | peak (GB) | peak - loaded (GB) |")
    print("|---|---|---|---|---|---|")
    for attention, pad, rows, length, extra in SETUPS:
        argv = [sys.executable, __file__, attention, str(pad), str(rows), str(length), *([extra] if extra else [])]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        loaded, peak = (float(x) for x in done.stdout.split()[-2:])
        print(f"| {attention} | {rows} x {length} | {extra or '-'} | {loaded:.2f} | {peak:.2f} | {peak - loaded:.2f} |")


if __name__ == "__main__":
    main()
