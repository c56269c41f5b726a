"""Sharded data parallel (FSDP2 through Accelerate): what the trainer does differently when each process
holds only a shard of the policy's parameters.

Under FSDP2 (``fully_shard``) the policy stays the same module, but its parameters are DTensors and every
forward gathers them with a collective, so:

* generation cannot run on the sharded policy (ranks generate different numbers of tokens and would stop
  meeting in the collectives): each rank generates with a full copy of the weights, HF's or vLLM's,
  which the trainer refreshes after every update with :func:`full_weights`, gathered one tensor at a time;
* the no-grad scoring passes (teacher, reference, old policy) run on every rank the same number of times;
* the frozen reference model is sharded the same way (:func:`shard_frozen`);
* checkpoints are Accelerate's sharded ones (torch.distributed.checkpoint, one folder per model and
  optimizer); the exported model is one HF folder gathered from the shards.

Accelerate selects FSDP only on accelerators; ``ACCELERATE_USE_CPU=true accelerate launch --config_file
fsdp.yaml`` runs the same code over gloo (:func:`fsdp_on_cpu`), which is how the tests check it and how a
user can try a sharded run on a laptop before the GPU job.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["fsdp_on_cpu", "full_tensor", "full_weights", "is_sharded", "shard_frozen", "sharding_problem"]


def fsdp_on_cpu(accelerator: Any) -> bool:
    """Turn on FSDP for CPU processes launched with an FSDP config (``ACCELERATE_USE_FSDP=true``), as
    Accelerate's own tests do: it picks plain gloo data parallelism on CPU and ignores the config. The
    plugin reads the launcher's ``FSDP_*`` variables. Returns whether it did."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if not (
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        and accelerator.distributed_type == DistributedType.MULTI_CPU
    ):
        return False
    plugin = FullyShardedDataParallelPlugin()
    # AcceleratorState copies PartialState's fields whenever it is built again: set both
    PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    return True


def is_sharded(accelerator: Any) -> bool:
    return accelerator.distributed_type.name == "FSDP"


def sharding_problem(accelerator: Any) -> str | None:
    """Why this launch cannot train correctly, or None."""
    kind = accelerator.distributed_type.name
    if kind == "FSDP" and getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) != 2:
        return (
            "FSDP1 is not supported: the trainer needs FSDP2 (fully_shard), which keeps the policy the same module; "
            "set fsdp_version: 2 in the accelerate config (sdar_train/configs/accelerate/fsdp2.yaml)"
        )
    if kind in ("DEEPSPEED", "MEGATRON_LM"):
        return (
            f"{kind} is not supported: its engine takes over the optimizer step and gradient accumulation, which the "
            "trainer's agreed mini-batches drive themselves. Use FSDP2 (sdar_train/configs/accelerate/fsdp2.yaml: "
            "ZeRO-3's sharding of parameters, gradients and optimizer state) or DDP"
        )
    return None


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a possibly sharded one (a collective for a DTensor: every rank must call it)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def full_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full tensor)`` in the base checkpoint's names, gathered one tensor at a time from a
    possibly sharded model (so no rank holds a second full copy at once). A peft model yields base +
    LoRA delta per layer, computed aside: merging into the model and unmerging again would leave rounding
    drift in the frozen base weights at every sync. Under FSDP every rank must iterate to the end."""
    state = model.state_dict()
    if not hasattr(model, "get_base_model"):
        for name, t in state.items():
            yield name, full_tensor(t).detach()
        return
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    for name, tensor in state.items():
        if "lora_" in name or "original_module" in name:
            continue
        tensor = full_tensor(tensor)
        owner = name.removesuffix(".base_layer.weight")
        if owner != name and owner in layers:
            tensor = tensor + _lora_delta(layers[owner], state, owner).to(tensor.dtype)
        name = (
            name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace("modules_to_save.default.", "")
        )
        yield name, tensor.detach()


def _lora_delta(layer: Any, state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """B @ A x scaling summed over the active adapters, from gathered A and B (peft's ``get_delta_weight``
    multiplies the sharded tensors themselves)."""
    delta: torch.Tensor | int = 0
    for a in layer.active_adapters:
        if a not in layer.lora_A:
            continue
        if not hasattr(layer.lora_A[a].weight, "full_tensor"):  # unsharded: peft's own (any LoRA variant)
            delta = delta + layer.get_delta_weight(a)
            continue
        lora_a = full_tensor(state[f"{prefix}.lora_A.{a}.weight"]).float()
        lora_b = full_tensor(state[f"{prefix}.lora_B.{a}.weight"]).float()
        d = (lora_b @ lora_a) * layer.scaling[a]
        delta = delta + (d.T if getattr(layer, "fan_in_fan_out", False) else d)
    return torch.as_tensor(delta)


def shard_frozen(accelerator: Any, model: torch.nn.Module) -> torch.nn.Module:
    """A frozen model (the KL reference) sharded as the policy is (Accelerate's FSDP2 preparation, which
    ``prepare`` only applies to a model that comes with its optimizer)."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    return fsdp2_prepare_model(accelerator, model)
