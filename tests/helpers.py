"""Helpers the tests share (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sdar_envs.alfworld.data import TASK_TYPES, list_tasks

ROOT = Path(__file__).resolve().parents[1]  # the repository
DATA = Path(__file__).resolve().parent / "data"  # the tests' recorded data


def sample_per_type(split: str, per_type: int) -> list:
    """The first ``per_type`` games of each task type: a fixed, type-balanced sample."""
    tasks = list_tasks(split)
    out = []
    for task_type in TASK_TYPES:
        out += [t for t in tasks if t.task_type == task_type][:per_type]
    return out


SMALL_RUN = {
    "env": "SDAR/SearchQA-v0", "env_kwargs": "{split: test}", "model": "tiny", "steps": "2", "tasks_per_step": "2",
    "group_size": "2", "max_turns": "2", "max_response_tokens": "8", "max_prompt_tokens": "512",
    "max_teacher_prompt_tokens": "768", "progress": "false",
}  # fmt: skip


# Sharded parameters make every forward a collective, so FSDP and ZeRO-3 never share a prompt beginning
# between forwards (sdar_train/batching.py); a DDP run compared with them to 1e-6 computes the same way.
SAME_PASSES = {"share_prefixes": "false"}


def run_args(**fields: object) -> list[str]:
    """``python -m sdar_train`` arguments for a small Search-QA run with the tiny model; ``fields``
    override or add (``--field value``)."""
    merged = {**SMALL_RUN, **{k: str(v) for k, v in fields.items()}}
    return [item for k, v in merged.items() for item in (f"--{k}", v)]


def launch_two_processes(
    module_args: list[str], *, cpu: bool = True, flags: tuple[str, ...] = ("--multi_gpu",), timeout: int = 600
) -> subprocess.CompletedProcess:
    """``accelerate launch --num_processes 2 <flags>`` of ``python -m <module_args>`` from the repository
    root. ``cpu``: DDP over gloo, which needs ``--multi_gpu`` plus ``ACCELERATE_USE_CPU`` (``--cpu
    --num_processes 2``, as people type it, starts one process)."""
    from servers.process import free_port

    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"ACCELERATE_USE_CPU": "true"} if cpu else {})}
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launcher = [accelerate, "launch", *flags, "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launcher += ["--dynamo_backend", "no", "--main_process_port", str(free_port())]
    return subprocess.run(
        [*launcher, "-m", *module_args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def response_logit_grads(model: Any, batch: Any) -> tuple[Any, list[int]]:
    """Score ``batch`` (a :class:`~sdar_train.policy.ScoredBatch`), back-propagate ``-sum(log p)`` over its
    response tokens, and return the gradient's size at every logit column the forward computed,
    ``[n, columns]``, with the column that predicts each row's first response token (0 left-padded; right-
    padded rows start apart, from the earliest reply's start)."""
    import torch

    from sdar_train.policy import response_logprobs

    captured: dict[str, torch.Tensor] = {}
    handle = model.lm_head.register_forward_hook(lambda m, i, o: captured.setdefault("logits", o))
    try:
        logp, _ = response_logprobs(model, batch, torch.device("cpu"))
        captured["logits"].retain_grad()
        (-(logp * batch.mask).sum()).backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    n = batch.mask.size(0)
    first = [0] * n if batch.starts is None else (batch.starts - batch.starts.min()).tolist()
    return captured["logits"].grad.abs().sum(-1), first
