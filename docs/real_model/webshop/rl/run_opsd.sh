#!/usr/bin/env bash
# GRPO+OPSD seeds 0 and 1 from the packaged warm start to their step-10 evaluation, two runs at once (4 December,
# from a worktree; each run was stopped after its step-10 evaluation). Resumable: run it again to continue.
cd "$(git rev-parse --show-toplevel)"
MALLOC_MMAP_THRESHOLD_=131072 exec .venv/bin/python -m sdar_train.miniature.real_model --env webshop --out runs/real --stages arms \
  --warm sdar_train/miniature/warmstart_smollm2_webshop --train_reward return --arms opsd --seeds 0,1 --threads 1 --parallel 2
