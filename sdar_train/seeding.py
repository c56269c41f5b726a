"""Every seed of a run, derived in one place from the run's seed and what it is for.

    derive_seed(run_seed, "tasks", step)          the B tasks of a training step (the same on every process)
    derive_seed(run_seed, "rollout", step, rank)  a process's rollout of a step; inside it
    derive_seed(rollout_seed, "reset", slot)        each environment slot's reset
    derive_seed(rollout_seed, "generate", turn)     each turn's sampling
    derive_seed(run_seed, "order", step)          the mini-batch order of a step's update
    derive_seed(run_seed, "demonstrations", step)  the resets of a behaviour-cloning step

A seed is a pure function of its inputs (numpy's SeedSequence over the integers and the purpose's
CRC32), so a resumed run, another process or another machine derives the same one. Values fit in 31
bits: every consumer (torch, numpy, Python's random, vLLM's per-request seeds) accepts them.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["derive_seed"]


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 31-bit seed for ``purpose`` (``"tasks"``, ``"rollout"``, ...) and its integer ``keys``."""
    entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(purpose.encode()), *(int(k) & 0xFFFFFFFF for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)
