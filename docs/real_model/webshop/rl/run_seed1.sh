#!/usr/bin/env bash
# seed 1 of GRPO and SDAR from the packaged warm start (the bf16 adapter of warm20), resumable
cd /work/wt-rl
exec /work/main/.venv/bin/python -m sdar_train.miniature.real_model --env webshop --out runs/real --stages arms \
  --warm sdar_train/miniature/warmstart_smollm2_webshop --train_reward return --arms grpo,sdar --seeds 1 --threads 1 --parallel 2
