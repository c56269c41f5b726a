#!/usr/bin/env bash
# RL from the 20-step SmolLM2 WebShop warm start: GRPO / SDAR / GRPO+OPSD x seeds 0,1, trained on the dense score
# (the warm start buys no exact target, so 10 x won gives nearly every group 0). Two runs at a time, one torch
# thread each. Resumable: run it again to continue. WARM: the warm start's exported folder (the 20-step one of
# run_webshop_warm.sh, or sdar_train.miniature.real_model --env webshop's runs/real/webshop/warmstart/final, or
# the packaged adapter of that same model, WARM=sdar_train/miniature/warmstart_smollm2_webshop, which skips cloning);
# runs/real/webshop/arms/start-<WARM>.json is its greedy evaluation on the 50 goals (computed when missing).
cd "$(git rev-parse --show-toplevel)"
WARM=${WARM:-runs/real/webshop/warmstart/final}
# a run peaks near 5 GB with glibc's mmap threshold fixed and grows to 13 GB without, so two at once need it (docs/real_model/README.md)
MALLOC_MMAP_THRESHOLD_=131072 exec .venv/bin/python -m sdar_train.miniature.real_model --env webshop --out runs/real --stages arms,report \
  --warm "$WARM" --train_reward return --arms grpo,sdar,opsd --seeds 0,1 --threads 1 --parallel 2
