"""Sharded data parallel (FSDP2 or DeepSpeed ZeRO through Accelerate): what the trainer does differently
when each process holds only a shard of the policy's parameters, gradients or optimizer state.

Under FSDP2 (``fully_shard``) the policy stays the same module, but its parameters are DTensors and every
forward gathers them with a collective, so:

* generation cannot run on the sharded policy (ranks generate different numbers of tokens and would stop
  meeting in the collectives): each rank generates with a full copy of the weights, HF's or vLLM's,
  which the trainer refreshes after every update with :func:`full_weights`, gathered one tensor at a time;
* the no-grad scoring passes (teacher, reference, old policy) run on every rank the same number of times;
* the frozen reference model is sharded the same way (:func:`shard_frozen`);
* checkpoints are Accelerate's sharded ones (torch.distributed.checkpoint, one folder per model and
  optimizer); the exported model is one HF folder gathered from the shards.

DeepSpeed ZeRO-3 shards the parameters too (every forward gathers them, as above); ZeRO-2 shards only
gradients and optimizer state, so its model generates and scores like DDP's. Either way DeepSpeed's engine
owns the optimizer step: the trainer marks the last micro-batch of each mini-batch as the accumulation
boundary (:func:`deepspeed_backward`) and DeepSpeed clips to ``max_grad_norm`` and steps there.

Accelerate selects FSDP and DeepSpeed only on accelerators; ``accelerate launch --config_file fsdp2.yaml``
(or ``zero3.yaml``) on a CPU machine runs the same code over gloo (:func:`sharding_on_cpu`), which is how
the tests check it and how a user can try a sharded run on a laptop before the GPU job.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from sdar_train.errors import ConfigError

__all__ = [
    "configure_deepspeed",
    "deepspeed_backward",
    "full_tensor",
    "full_weights",
    "is_sharded",
    "shard_frozen",
    "sharding_on_cpu",
    "sharding_problem",
    "uses_deepspeed",
    "zero_stage",
]


def sharding_on_cpu(accelerator: Any) -> str | None:
    """Turn on FSDP or DeepSpeed for CPU processes launched with such a config (``ACCELERATE_USE_FSDP`` /
    ``ACCELERATE_USE_DEEPSPEED``), as Accelerate's own tests do: on CPU it picks plain gloo data parallelism
    and ignores the config. The plugins read the launcher's variables. Returns what it turned on."""
    from accelerate import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return None
    # AcceleratorState copies PartialState's fields whenever it is built again: set both
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        return "FSDP"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        import deepspeed.ops

        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce at init (C++: a compiler and about
        # 100 s on 2 cores) that only its inference kernels call; ZeRO's collectives go through gloo anyway.
        # Its ops module keeps this dict for edits like this one (deepspeed/ops/__init__.py).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        plugin = DeepSpeedPlugin()
        plugin.set_mixed_precision("no")
        PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.DEEPSPEED
        accelerator.state.deepspeed_plugins = plugin
        plugin.select(_from_accelerator_state=True)
        accelerator.deepspeed_engine_wrapped = None
        return "DEEPSPEED"
    return None


def uses_deepspeed(accelerator: Any) -> bool:
    return accelerator.distributed_type.name == "DEEPSPEED"


def zero_stage(accelerator: Any) -> int:
    """DeepSpeed's ZeRO stage (0 without DeepSpeed)."""
    return int(accelerator.state.deepspeed_plugin.zero_stage) if uses_deepspeed(accelerator) else 0


def is_sharded(accelerator: Any) -> bool:
    """Whether the policy's parameters are sharded, so that every forward is a collective."""
    return accelerator.distributed_type.name == "FSDP" or zero_stage(accelerator) == 3


def sharding_problem(accelerator: Any) -> str | None:
    """Why this launch cannot train correctly, or None."""
    kind = accelerator.distributed_type.name
    if kind == "FSDP" and getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) != 2:
        return (
            "FSDP1 is not supported: the trainer needs FSDP2 (fully_shard), which keeps the policy the same module; "
            "set fsdp_version: 2 in the accelerate config (sdar_train/configs/accelerate/fsdp2.yaml)"
        )
    if kind == "DEEPSPEED":
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        steps = config.get("gradient_accumulation_steps", "auto")
        if steps not in ("auto", 1):
            return (
                f"DeepSpeed gradient_accumulation_steps must be 1 or auto, got {steps}: the trainer accumulates "
                "micro-batches itself (mini_batch_size / micro_batch_size) and marks each mini-batch's boundary"
            )
        for section in ("optimizer", "scheduler"):
            if section in config:
                return (
                    f"remove the DeepSpeed config's {section!r} section: the trainer's AdamW (--lr, --weight_decay) "
                    "is the optimizer, as in every other launch"
                )
        if zero_stage(accelerator) not in (1, 2, 3):
            return f"DeepSpeed ZeRO stage {zero_stage(accelerator)} is not supported: use stage 2 or 3"
    if kind == "MEGATRON_LM":
        return "MEGATRON_LM is not supported: use FSDP2 (sdar_train/configs/accelerate/fsdp2.yaml) or DeepSpeed"
    return None


def configure_deepspeed(accelerator: Any, *, micro_batch_size: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed config's batch and clipping fields from the trainer's (before ``prepare``).
    DeepSpeed requires batch sizes although the trainer feeds it: its accumulation count stays 1 because
    the trainer marks boundaries itself, and it clips to the trainer's ``max_grad_norm`` at each step."""

    config = accelerator.state.deepspeed_plugin.deepspeed_config
    clip = config.get("gradient_clipping", "auto")
    if clip not in ("auto", None) and float(clip) != float(max_grad_norm):
        raise ConfigError(
            f"the DeepSpeed config's gradient_clipping ({clip}) differs from --max_grad_norm ({max_grad_norm}): "
            "set it to auto, or pass --max_grad_norm to match"
        )
    # transformers would otherwise build every model under zero.Init (partitioned as it loads) and generate
    # with synced_gpus; the trainer loads whole weights, copies them (generation, reference) and lets
    # ``prepare`` partition the policy
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    config.update(
        gradient_accumulation_steps=1,
        gradient_clipping=float(max_grad_norm),
        train_micro_batch_size_per_gpu=micro_batch_size,
        train_batch_size=micro_batch_size * accelerator.num_processes,
    )


def deepspeed_backward(engine: Any, loss: torch.Tensor, *, boundary: bool) -> None:
    """Backward one micro-batch through DeepSpeed's engine; at a mini-batch's last micro-batch
    (``boundary``) the engine reduces the accumulated gradients, clips them, steps the optimizer and
    zeroes the gradients. (Accelerate's ``backward`` would step after every micro-batch.)"""
    engine.set_gradient_accumulation_boundary(is_boundary=boundary)
    engine.backward(loss)
    if boundary:
        engine.step()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a possibly sharded one (a collective for a DTensor: every rank must call it)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def full_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full tensor)`` in the base checkpoint's names, gathered one tensor at a time from a
    possibly sharded model (so no rank holds a second full copy at once). A peft model yields base +
    LoRA delta per layer, computed aside: merging into the model and unmerging again would leave rounding
    drift in the frozen base weights at every sync. Under FSDP and ZeRO-3 every rank must iterate to the
    end."""
    if any(hasattr(p, "ds_id") for p in model.parameters()):  # DeepSpeed ZeRO-3: partitioned parameters
        yield from _zero3_full_weights(model)
        return
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
        yield _base_name(name), tensor.detach()


def _base_name(name: str) -> str:
    """A peft model's parameter name in the base checkpoint's names."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace("modules_to_save.default.", "")


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


def _zero3_full_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """:func:`full_weights` of a ZeRO-3 model: each module's own parameters gathered at a time (a LoRA
    layer's base and adapters together, to merge them), so no rank holds a full copy at once."""
    import deepspeed
    from peft.tuners.lora import LoraLayer

    peft = hasattr(model, "get_base_model")
    skip: set[str] = set()
    for prefix, module in model.named_modules():
        if any(prefix.startswith(s + ".") for s in skip):
            continue
        lora = peft and isinstance(module, LoraLayer)
        params = dict(module.named_parameters(recurse=lora))
        buffers = {  # as in a state dict: persistent buffers only
            n: b for n, b in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set
        }
        if not params and not buffers:
            continue
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
            if lora:
                skip.add(prefix)
                base = module.get_base_layer()
                weight = base.weight + sum(
                    (module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A),
                    torch.zeros_like(base.weight),
                )
                tensors = {"weight": weight, **({"bias": base.bias} if getattr(base, "bias", None) is not None else {})}
            else:
                tensors = {**params, **buffers}
            for name, t in tensors.items():
                full = f"{prefix}.{name}" if prefix else name
                yield _base_name(full) if peft else full, t.detach().clone()


def shard_frozen(accelerator: Any, model: torch.nn.Module) -> torch.nn.Module:
    """A frozen model (the KL reference) sharded as the policy is: Accelerate's FSDP2 preparation (which
    ``prepare`` only applies to a model that comes with its optimizer), or a ZeRO-3 inference engine."""
    if uses_deepspeed(accelerator):
        import deepspeed

        policy = accelerator.state.deepspeed_plugin.deepspeed_config
        config = {
            "train_micro_batch_size_per_gpu": policy["train_micro_batch_size_per_gpu"],
            "zero_optimization": {"stage": 3},
            "bf16": policy.get("bf16", {"enabled": False}),
            "fp16": policy.get("fp16", {"enabled": False}),
        }
        engine, *_ = deepspeed.initialize(model=model, config=config)
        engine.eval()  # (DeepSpeed's eval() returns None)
        return engine
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    return fsdp2_prepare_model(accelerator, model)
