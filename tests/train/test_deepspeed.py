"""DeepSpeed ZeRO-2/3 through Accelerate: two CPU processes over gloo, launched with the shipped config
files, train as DDP does, resume exactly from DeepSpeed's partitioned checkpoints, and export one HF model.

Accelerate runs DeepSpeed only on accelerators; ``sdar_train.sharding.sharding_on_cpu`` turns it on for a
DeepSpeed launch on CPU, where DeepSpeed's CPU accelerator talks over gloo. These runs exercise DeepSpeed's
real engine: ZeRO-3 partitions parameters (every forward gathers them), both stages partition gradients
and optimizer state, and the engine steps the trainer's AdamW at each mini-batch boundary."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from sdar_train.sharding import configure_deepspeed, sharding_problem
from tests.helpers import SAME_PASSES, launch_two_processes, run_args
from tests.train.test_sharding import ACCELERATE_CONFIGS, assert_resumes_exactly, assert_same_weights, train_rows

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'sdar[deepspeed]')")


def launch(config: str, **fields: object):
    """``accelerate launch --config_file <config>.yaml`` of a small run. No ACCELERATE_USE_CPU: with it the
    launcher would drop DeepSpeed; the trainer sees no CUDA and turns DeepSpeed on over gloo itself."""
    flags = ("--config_file", str(ACCELERATE_CONFIGS / f"{config}.yaml"))
    return launch_two_processes(["sdar_train", *run_args(**fields)], cpu=False, flags=flags)


def fake_accelerator(**config: object) -> SimpleNamespace:
    plugin = SimpleNamespace(zero_stage=config.pop("stage", 3), deepspeed_config=dict(config))
    return SimpleNamespace(
        distributed_type=SimpleNamespace(name="DEEPSPEED"),
        state=SimpleNamespace(deepspeed_plugin=plugin),
        num_processes=2,
    )


# --- without processes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, stage", [("zero2", 2), ("zero3", 3)])
def test_shipped_deepspeed_configs_load(name, stage):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.name == "DEEPSPEED"
    assert (
        config.deepspeed_config["zero_stage"] == stage and config.deepspeed_config["gradient_accumulation_steps"] == 1
    )


@pytest.mark.parametrize(
    "config, says",
    [
        ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps must be 1 or auto"),
        ({"optimizer": {"type": "AdamW"}}, "remove the DeepSpeed config's 'optimizer' section"),
        ({"scheduler": {"type": "WarmupLR"}}, "remove the DeepSpeed config's 'scheduler' section"),
        ({"stage": 0}, "ZeRO stage 0 is not supported"),
        ({"gradient_accumulation_steps": "auto"}, None),
        ({"stage": 2, "gradient_accumulation_steps": 1}, None),
    ],
)
def test_deepspeed_settings_the_trainer_cannot_honour_are_refused(config, says):
    problem = sharding_problem(fake_accelerator(**config))
    assert problem is None if says is None else says in problem


def test_the_trainer_fills_deepspeeds_batch_and_clipping_fields():
    from sdar_train.config import ConfigError

    acc = fake_accelerator(gradient_clipping="auto", train_micro_batch_size_per_gpu="auto")
    configure_deepspeed(acc, micro_batch_size=8, max_grad_norm=0.5)
    config = acc.state.deepspeed_plugin.deepspeed_config
    assert config["gradient_clipping"] == 0.5 and config["gradient_accumulation_steps"] == 1
    assert config["train_micro_batch_size_per_gpu"] == 8 and config["train_batch_size"] == 16
    with pytest.raises(ConfigError, match="gradient_clipping"):  # two answers to one question: say so
        configure_deepspeed(fake_accelerator(gradient_clipping=1.0), micro_batch_size=8, max_grad_norm=0.5)


# --- two CPU processes -----------------------------------------------------------------------------------
def run_beside_ddp(
    ddp_run: Callable[..., Path], config: str, out: Path, **fields: object
) -> tuple[list[dict], list[dict], Path]:
    """The same small run under ``config`` and under DDP (the session's reference run of these fields):
    their training rows and the DDP run's folder."""
    ddp = ddp_run(**fields)
    sharded = launch(config, **fields, output_dir=out / config)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    return train_rows(out / config), train_rows(ddp), ddp


def assert_trains_as_ddp(rows: list[dict], reference: list[dict], keys: tuple[str, ...]) -> None:
    assert [r["step"] for r in rows] == [r["step"] for r in reference] and all(r["samples"] > 0 for r in rows)
    for r, d in zip(rows, reference, strict=True):
        for key in keys:  # DeepSpeed sums the gradient norm over its partitions: the same up to rounding
            assert math.isclose(r[key], d[key], rel_tol=1e-4, abs_tol=1e-6), (key, r[key], d[key])


@pytest.mark.slow
def test_zero3_trains_as_ddp_does_and_resumes_exactly_from_its_checkpoints(tmp_path, ddp_run):
    """SDAR with a KL reference (a ZeRO-3 engine too), a teacher pass and periodic evaluation: the losses
    and the exported model equal DDP's; stopping after step 1 and resuming gives the same model."""
    common = dict(algo="sdar", kl_coef=0.01, save_every=1, eval_every=1, eval_episodes=2, **SAME_PASSES)
    rows, reference, ddp = run_beside_ddp(ddp_run, "zero3", tmp_path, **common)
    assert rows[-1]["kl"] > 0
    assert_trains_as_ddp(rows, reference, ("loss", "sdar_loss", "gate_mean", "kl", "entropy", "grad_norm"))
    assert_same_weights(tmp_path / "zero3" / "final", ddp / "final")
    checkpoint = tmp_path / "zero3" / "checkpoints" / "step_000001" / "pytorch_model"
    assert len(list(checkpoint.glob("zero_pp_rank_*_optim_states.pt"))) == 2  # each process wrote its part

    assert_resumes_exactly(lambda **f: launch("zero3", **f), common, tmp_path / "zero3")


@pytest.mark.slow
def test_zero2_trains_as_ddp_does_over_several_micro_batches_and_refuses_a_damaged_checkpoint(tmp_path, ddp_run):
    """GRPO with micro-batches of 2: DeepSpeed must step once per mini-batch, after all of them."""
    common = dict(algo="grpo", micro_batch_size=2, save_every=1, lr=1e-3)
    rows, reference, ddp = run_beside_ddp(ddp_run, "zero2", tmp_path, **common)
    assert_trains_as_ddp(rows, reference, ("loss", "entropy", "grad_norm"))
    # Adam divides each gradient by its own scale, so the last-bit differences of DeepSpeed's reduction can
    # move a weight with a near-zero gradient by a fraction of lr (measured: 4 of 0.5M weights, <= 4e-6)
    assert_same_weights(tmp_path / "zero2" / "final", ddp / "final", atol=1e-2 * 1e-3)

    (tmp_path / "zero2" / "checkpoints" / "step_000002" / "latest").unlink()  # a save cut short
    again = launch("zero2", **{**common, "steps": 3}, resume="true", output_dir=tmp_path / "zero2")
    assert again.returncode != 0
    assert "latest: missing, so DeepSpeed's save did not finish" in again.stderr


@pytest.mark.slow
def test_lora_under_zero3_trains_as_under_ddp_and_exports_the_merged_model(tmp_path, ddp_run):
    from safetensors.torch import load_file

    rows, reference, ddp = run_beside_ddp(
        ddp_run, "zero3", tmp_path, algo="sdar", kl_coef=0.01, lora_r=4, lr=1e-3, **SAME_PASSES
    )
    assert rows[-1]["kl"] > 0
    assert_trains_as_ddp(rows, reference, ("loss", "kl", "sdar_loss"))
    assert_same_weights(tmp_path / "zero3" / "final", ddp / "final", atol=1e-2 * 1e-3)  # 1% of lr
    assert not any("lora" in k for k in load_file(tmp_path / "zero3" / "final" / "model.safetensors"))
