"""The demos' packaged warm starts: where they live, how they are written and how a demo checks one against
its ``SHA256SUMS`` before use (:func:`check_warmstart`).

- ``warmstart/`` (:data:`WARMSTART`, ``make demo``): the ~1.4M-parameter tiny model the replication kit clones
  (:func:`package_warmstart`);
- ``warmstart_smollm2_webshop/`` (:data:`REAL_WARMSTART`, ``make demo-real``): SmolLM2-135M-Instruct's WebShop
  warm start as a LoRA adapter over the wheel's base model (:func:`package_adapter`); ``--model`` accepts the
  folder and merges it into its base once (``sdar_train.models``);
- ``warmstart_smollm2_webshop_40steps/`` (:data:`REAL_WARMSTART_40`): that warm start cloned 20 steps more, as a
  LoRA adapter over it (its base ``../warmstart_smollm2_webshop``: the two merge in turn)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from sdar_train.policy import load_policy

__all__ = [
    "REAL_WARMSTART",
    "REAL_WARMSTART_40",
    "WARMSTART",
    "check_warmstart",
    "package_adapter",
    "package_warmstart",
]

WARMSTART = Path(__file__).resolve().parent / "warmstart"
REAL_WARMSTART = Path(__file__).resolve().parent / "warmstart_smollm2_webshop"
REAL_WARMSTART_40 = REAL_WARMSTART.with_name("warmstart_smollm2_webshop_40steps")


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


def _write_sums(folder: Path) -> None:
    files = sorted(f.name for f in folder.iterdir() if f.is_file() and f.name != "SHA256SUMS")
    sums = "".join(f"{hashlib.sha256((folder / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    (folder / "SHA256SUMS").write_text(sums)


def package_adapter(adapter: Path, dest: Path, base: str, recipe: dict[str, Any], readme: str) -> Path:
    """Copy the LoRA adapter folder ``adapter`` (a run's ``final/adapter``) into ``dest`` as a demo ships it:
    its weights in bf16 (half the bytes; merged into the fp32 base they move 0.5% of the bf16 weights by one
    unit in the last place), its config naming ``base`` (e.g. ``smollm2-135m-instruct``, so it resolves on any
    machine), ``recipe.json``, ``README.md`` and ``SHA256SUMS`` of every file."""
    from safetensors.torch import load_file, save_file

    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (staging / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    save_file(
        {k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, str(staging / "adapter_model.safetensors")
    )
    (staging / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    (staging / "README.md").write_text(readme)
    _write_sums(staging)
    shutil.rmtree(dest, ignore_errors=True)
    staging.replace(dest)
    return dest


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
    _write_sums(staging)
    shutil.rmtree(dest, ignore_errors=True)
    staging.replace(dest)
    return dest
