"""Data-parallel check: the gradient the trainer computes with N processes equals the gradient of the
whole batch on one process.

    python -m tests.train.grad_check --out one.pt
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 -m tests.train.grad_check --out two.pt
    ACCELERATE_USE_CPU=true accelerate launch --config_file sdar_train/configs/accelerate/fsdp2.yaml \
        --num_processes 2 --mixed_precision no -m tests.train.grad_check --out fsdp.pt

A fixed batch of 12 turn samples of different lengths (with advantages, teacher and reference
log-probs) is split unevenly across the processes (rank 0 gets 3, rank 1 gets 9: episodes differ in
length), and each process runs the trainer's own update loop (:meth:`Trainer.update`, SDAR: PPO-clip +
KL + gated distillation, micro-batches of 2) on its share without stepping the optimizer; rank 0 saves
the all-reduced gradient, and the response log-probs of the no-grad scoring pass on the same split. (On CPU, ``--multi_gpu`` with gloo is what makes Accelerate start two
processes; ``--cpu --num_processes 2`` silently runs one.)
"""

from __future__ import annotations

import argparse
import tempfile

import gymnasium as gym
import torch
from accelerate.utils import gather_object

from sdar_train.config import TrainConfig
from sdar_train.sharding import full_tensor


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if "Test/LetterY-v0" not in gym.registry:
        gym.register("Test/LetterY-v0", entry_point="tests.train.toy_env:LetterEnv")
    from sdar_train.trainer import Trainer, TurnBatch

    cfg = TrainConfig(
        env="Test/LetterY-v0",
        algo="sdar",
        model="tiny",
        output_dir=tempfile.mkdtemp(),
        steps=1,
        tasks_per_step=2,
        group_size=2,
        kl_coef=0.01,
        sdar_coef=0.5,
        progress=False,
        mini_batch_size=64,
        micro_batch_size=2,
    )
    trainer = Trainer(cfg)
    gen = torch.Generator().manual_seed(0)
    n = 12
    prompts = [
        torch.randint(10, 4000, (int(torch.randint(5, 30, (1,), generator=gen)),), generator=gen).tolist()
        for _ in range(n)
    ]
    responses = [
        torch.randint(10, 4000, (int(torch.randint(1, 9, (1,), generator=gen)),), generator=gen).tolist()
        for _ in range(n)
    ]
    adv = torch.randn(n, generator=gen)
    teacher = -torch.rand(n, 8, generator=gen) * 5
    ref = -torch.rand(n, 8, generator=gen) * 5
    acc = trainer.accelerator
    mine = (
        list(range(n)) if acc.num_processes == 1 else (list(range(3)) if acc.process_index == 0 else list(range(3, n)))
    )
    pick = lambda xs: [xs[i] for i in mine]  # noqa: E731
    # the no-grad scoring pass on the uneven split (sharded: the ranks must agree on the forwards)
    scored = trainer._score(acc.unwrap_model(trainer.model), pick(prompts), pick(responses))
    scored = torch.nn.functional.pad(scored, (0, 8 - scored.size(1)))
    logp = torch.cat(gather_object([scored])) if acc.num_processes > 1 else scored
    trainer.update(
        TurnBatch(pick(prompts), pick(responses), adv[mine], ref_logp=ref[mine], teacher_logp=teacher[mine]),
        step=0,
        optimizer_step=False,
    )
    grads = {  # a sharded gradient is gathered (every process takes part)
        k: full_tensor(v.grad).detach().cpu().clone()
        for k, v in acc.unwrap_model(trainer.model).named_parameters()
        if v.grad is not None
    }
    if acc.is_main_process:
        torch.save(
            {
                "grads": grads,
                "logp": logp,
                "lengths": [len(r) for r in responses],
                "processes": acc.num_processes,
                "sharded": trainer.sharded,
            },
            args.out,
        )
    trainer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
