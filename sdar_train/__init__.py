"""sdar_train: one Accelerate-based trainer for GRPO, SDAR and the paper's baselines on any SDAR/* env.

* ``python -m sdar_train --config alfworld_sdar.yaml`` (or ``accelerate launch -m sdar_train ...``)
* ``python -m sdar_train.eval --env ... --model ...``: deterministic evaluation
* ``python -m sdar_train.tiny_model --out DIR``: the ~1M-parameter local Qwen2 for CPU runs
"""

from sdar_train.config import ALGORITHMS, TrainConfig, load_config

__all__ = ["ALGORITHMS", "TrainConfig", "load_config"]
