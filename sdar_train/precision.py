"""Which precision a run computes in, when the user does not say: bf16 on GPUs; on a CPU, bf16 where the
CPU has native bf16 instructions (AVX512-BF16 or AMX) and the model is wide enough for them to pay;
fp32 otherwise.

Measured on this project's 2-core AVX512-BF16 CPU with ``bench/precision.py`` (fp32 / bf16 time, above 1:
bf16 faster):

| model | rows x tokens | train (fwd + bwd + AdamW, autocast) | score (no-grad, bf16 weights) |
|---|---|---|---|
| SmolLM2-135M (576 wide) | 2 x 128 | 1.40 | 2.06 |
| SmolLM2-135M (576 wide) | 4 x 384 | 1.69 | 1.70 |
| tiny (128 wide) | 2 x 128 | 0.85 | 0.76 |
| tiny (128 wide) | 4 x 384 | 1.36 | 1.13 |
| tiny (128 wide) | 4 x 1024 | 1.38 | 1.21 |

So a real model's width pays at every size measured, while a narrow model loses on small batches and
gains less on large ones; narrow models (the tiny test model among them, whose exact cross-process
checks are made in fp32) stay fp32 unless ``--bf16 true``. Without native bf16 the CPU emulates it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["MIN_CPU_BF16_WIDTH", "choose_bf16", "cpu_has_native_bf16", "model_width"]

MIN_CPU_BF16_WIDTH = 512  # hidden size from which bf16 paid at every batch size measured (above)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX tiles, as PyTorch's own CPU dispatch sees them."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def model_width(path: str) -> int:
    """The hidden size in a model folder's ``config.json`` (its text model's, for a multimodal one); 0 when
    it names none."""
    config = json.loads((Path(path) / "config.json").read_text())
    config = config.get("text_config", config)
    return int(config.get("hidden_size") or config.get("n_embd") or config.get("d_model") or 0)


def choose_bf16(asked: bool | None, *, cuda: bool, model: str) -> tuple[bool, str]:
    """(bf16 or not, why) for ``--bf16 asked``; ``None`` chooses: GPUs yes; CPUs by their instructions and
    the width of ``model`` (anything :func:`sdar_train.models.resolve_model_path` resolves)."""
    if asked is not None:
        return asked, "asked"
    if cuda:
        return True, "auto: GPU"
    if not cpu_has_native_bf16():
        return False, "auto: this CPU has no native bf16"
    from sdar_train.models import resolve_model_path

    width = model_width(resolve_model_path(model))
    if width < MIN_CPU_BF16_WIDTH:
        return False, f"auto: a {width}-wide model, under the {MIN_CPU_BF16_WIDTH} wide that bf16 needs to pay on CPU"
    return True, f"auto: native bf16 CPU, {width}-wide model"
