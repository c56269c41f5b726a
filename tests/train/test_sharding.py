"""Sharded training (FSDP2 through Accelerate): two CPU processes over gloo, launched with the shipped
config file, train exactly as DDP does, resume exactly from sharded checkpoints, and export one HF model.
(DeepSpeed ZeRO: tests/train/test_deepspeed.py.)

Accelerate picks FSDP only on accelerators; ``sdar_train.sharding.sharding_on_cpu`` turns it on for an FSDP
launch on CPU, so these runs exercise torch's real ``fully_shard`` (DTensor parameters, gathered forwards,
reduce-scattered gradients, torch.distributed.checkpoint). Generation and evaluation run on a full copy
of the weights that every update refreshes."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from sdar_train.sharding import full_weights, sharding_problem
from tests.helpers import ROOT, SAME_PASSES, launch_two_processes, run_args

ACCELERATE_CONFIGS = ROOT / "sdar_train" / "configs" / "accelerate"
FSDP = ("--config_file", str(ACCELERATE_CONFIGS / "fsdp2.yaml"))


def train_rows(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol), k


# --- without processes ---------------------------------------------------------------------------------
def test_shipped_accelerate_configs_load_and_say_fsdp2():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE_CONFIGS / "fsdp2.yaml"))
    assert config.distributed_type.name == "FSDP" and config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"


@pytest.mark.parametrize(
    "kind, version, says",
    [("FSDP", 1, "FSDP1 is not supported"), ("MEGATRON_LM", None, "MEGATRON_LM is not supported"), ("FSDP", 2, None)],
)
def test_unsupported_sharding_is_refused_with_the_way_out(kind, version, says):
    acc = SimpleNamespace(
        distributed_type=SimpleNamespace(name=kind),
        state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=version)),
    )
    problem = sharding_problem(acc)
    if says is None:
        assert problem is None
    else:
        assert says in problem and "fsdp2.yaml" in problem


def test_full_weights_of_a_lora_model_are_the_merged_model():
    """What the vLLM engine and the generation copy load, and what the sharded export writes."""
    from peft import LoraConfig, get_peft_model

    from sdar_train.policy import load_policy

    policy = load_policy("tiny", torch.device("cpu"))
    names = set(policy.model.state_dict())
    model = get_peft_model(
        policy.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # B starts at zero: make the adapters matter
    weights = dict(full_weights(model))
    merged = model.merge_and_unload().state_dict()
    assert set(weights) == names
    for k, t in merged.items():
        assert torch.allclose(weights[k], t, atol=1e-6), k


def test_a_generation_copy_samples_what_the_trained_model_would_after_sync():
    import copy

    from sdar_train.generation import HFGenerator, Sampling
    from sdar_train.policy import Policy, load_policy

    policy = load_policy("tiny", torch.device("cpu"))
    trained = policy.model
    gen = HFGenerator(Policy(copy.deepcopy(trained), policy.tokenizer, policy.device), own_copy=True)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # an "update" the copy has not seen
    prompts, sampling = [[5, 6, 7, 8], [9, 10]], Sampling(6, 1.0, stop_ids=tuple(policy.stop_ids))
    reference = HFGenerator(policy)(prompts, 3, sampling)
    gen.sync(trained)
    assert gen(prompts, 3, sampling) == reference
    assert all(
        torch.equal(a, b)
        for a, b in zip(gen.policy.model.state_dict().values(), trained.state_dict().values(), strict=True)
    )


# --- two CPU processes -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_fsdp_gradient_equals_the_full_batch_gradient_of_one_process(tmp_path):
    """The trainer's update (SDAR: PPO-clip + KL + gated distillation) on an uneven split of one batch,
    parameters and gradients sharded, gathered afterwards: the gradient of the whole batch on one process;
    and its scoring pass (teacher / reference / old log-probs), 2 vs 5 micro-batches: the same log-probs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "true"}
    one = subprocess.run(
        [sys.executable, "-m", "tests.train.grad_check", "--out", str(tmp_path / "one.pt")],
        env=env, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch_two_processes(["tests.train.grad_check", "--out", str(tmp_path / "fsdp.pt")], flags=FSDP, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "fsdp.pt")
    assert two["processes"] == 2 and two["sharded"] and one["grads"].keys() == two["grads"].keys()
    for name, g in one["grads"].items():
        assert torch.allclose(g, two["grads"][name], atol=1e-5, rtol=1e-4), name
    assert one["logp"].shape == two["logp"].shape == (12, 8)
    for row, n in enumerate(one["lengths"]):  # past a response's end a row holds padding, which nothing reads
        assert torch.allclose(one["logp"][row, :n], two["logp"][row, :n], atol=1e-5), row


@pytest.mark.slow
def test_fsdp_trains_as_ddp_does_resumes_exactly_and_refuses_an_unfinished_checkpoint(tmp_path, ddp_run):
    """SDAR with a KL reference (sharded too), a teacher pass and periodic evaluation: the losses and the
    exported model equal DDP's on the same seeds; stopping after step 1 and resuming gives the same model;
    a checkpoint whose optimizer save was cut short is refused."""
    common = dict(algo="sdar", kl_coef=0.01, save_every=1, eval_every=1, eval_episodes=2, **SAME_PASSES)
    ddp = ddp_run(**common)
    fsdp = launch_two_processes(["sdar_train", *run_args(**common, output_dir=tmp_path / "fsdp")], flags=FSDP)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    rows, reference = train_rows(tmp_path / "fsdp"), train_rows(ddp)
    assert [r["step"] for r in rows] == [0, 1] and all(r["samples"] > 0 for r in rows)
    for r, d in zip(rows, reference, strict=True):
        for key in ("loss", "sdar_loss", "gate_mean", "kl", "entropy", "grad_norm"):
            assert math.isclose(r[key], d[key], rel_tol=1e-4, abs_tol=1e-6), (key, r[key], d[key])
    assert_same_weights(tmp_path / "fsdp" / "final", ddp / "final")
    checkpoint = tmp_path / "fsdp" / "checkpoints" / "step_000001"
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):  # each process wrote its own shard
        assert (checkpoint / folder / ".metadata").is_file() and len(list((checkpoint / folder).glob("*.distcp"))) == 2

    def launch(**fields: object) -> subprocess.CompletedProcess:
        return launch_two_processes(["sdar_train", *run_args(**fields)], flags=FSDP)

    assert_resumes_exactly(launch, common, tmp_path / "fsdp")

    # a save cut short (one launch fewer than a run of its own: the suite's time is spent on launches)
    for step in (tmp_path / "fsdp" / "checkpoints").iterdir():
        (step / "optimizer_0" / ".metadata").unlink()
    again = launch(**{**common, "steps": 3}, resume="true", output_dir=tmp_path / "fsdp")
    assert again.returncode != 0
    assert "optimizer_0: missing or unfinished (no .metadata)" in again.stderr, again.stderr[-3000:]


def assert_resumes_exactly(launch: Callable[..., subprocess.CompletedProcess], common: dict, whole: Path) -> None:
    """A run of ``common`` (two steps) stopped after step 1 and resumed to two gives ``whole``'s final
    model, exported as one plain HF folder."""
    part = whole.with_name(whole.name + "-resumed")
    first = launch(**{**common, "steps": 1}, output_dir=part)
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.rmtree(part / "final")
    second = launch(**common, resume="true", output_dir=part)
    assert second.returncode == 0, second.stderr[-3000:]
    assert [r["step"] for r in train_rows(part)] == [0, 1]
    assert_same_weights(part / "final", whole / "final")

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(part / "final", local_files_only=True)


@pytest.mark.slow
def test_lora_under_fsdp_trains_as_under_ddp_and_exports_the_merged_model(tmp_path, ddp_run):
    """LoRA adapters sharded with their frozen base; the KL reference is the base (adapters off); the
    export is the merged model in the base checkpoint's names."""
    common = dict(algo="sdar", kl_coef=0.01, lora_r=4, lr=1e-3, **SAME_PASSES)
    ddp = ddp_run(**common)
    fsdp = launch_two_processes(["sdar_train", *run_args(**common, output_dir=tmp_path / "fsdp")], flags=FSDP)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    rows = train_rows(tmp_path / "fsdp")
    assert rows[-1]["kl"] > 0 and math.isclose(rows[-1]["kl"], train_rows(ddp)[-1]["kl"], rel_tol=1e-4)
    assert_same_weights(tmp_path / "fsdp" / "final", ddp / "final")
    assert not any("lora" in k for k in load_file(tmp_path / "fsdp" / "final" / "model.safetensors"))
