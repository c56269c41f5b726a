"""The demo's packaged warm start (``sdar_train/miniature/warmstart/``): where it lives, how the replication kit
writes it (:func:`package_warmstart`) and how the demo checks it before use (:func:`check_warmstart`)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from sdar_train.policy import load_policy

__all__ = ["WARMSTART", "check_warmstart", "package_warmstart"]

WARMSTART = Path(__file__).resolve().parent / "warmstart"


def check_warmstart(path: Path = WARMSTART) -> Path:
    """The packaged warm start, after checking every file against ``SHA256SUMS`` beside it."""
    sums = path / "SHA256SUMS"
    if not sums.is_file():
        raise FileNotFoundError(
            f"{sums} is missing: rebuild it with python -m sdar_train.miniature.replicate --package true"
        )
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if hashlib.sha256((path / name).read_bytes()).hexdigest() != digest:
            raise ValueError(f"{path / name} does not match its sha256 in {sums}")
    return path


def package_warmstart(warm: Path, dest: Path) -> Path:
    """Copy a warm start into ``dest`` as the demo ships it: bf16 weights (half the bytes; the demo trains
    and evaluates from these same weights), tokenizer, recipe and curve, and ``SHA256SUMS`` of every file."""
    from transformers import AutoModelForCausalLM

    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(warm, dtype=torch.bfloat16)
    model.save_pretrained(staging)
    load_policy(str(warm), torch.device("cpu")).tokenizer.save_pretrained(staging)
    for name in ("recipe.json", "curve.jsonl"):
        shutil.copy(warm / name, staging / name)
    files = sorted(f.name for f in staging.iterdir() if f.is_file())
    sums = "".join(f"{hashlib.sha256((staging / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    (staging / "SHA256SUMS").write_text(sums)
    shutil.rmtree(dest, ignore_errors=True)
    staging.replace(dest)
    return dest
