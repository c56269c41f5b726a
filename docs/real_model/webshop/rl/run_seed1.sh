#!/usr/bin/env bash
# seed 1 of GRPO and SDAR from the packaged warm start (the bf16 adapter of warm20), resumable. As it ran on
# 4 December (from a worktree); both runs were resumed at steps 9 and 11 with MALLOC_MMAP_THRESHOLD_=131072 after
# the out-of-memory killer stopped one (docs/real_model/README.md, "Where the memory went")
cd "$(git rev-parse --show-toplevel)"
MALLOC_MMAP_THRESHOLD_=131072 exec .venv/bin/python -m sdar_train.miniature.real_model --env webshop --out runs/real --stages arms \
  --warm sdar_train/miniature/warmstart_smollm2_webshop --train_reward return --arms grpo,sdar --seeds 1 --threads 1 --parallel 2
