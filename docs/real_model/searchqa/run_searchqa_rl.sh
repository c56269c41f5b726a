#!/usr/bin/env bash
# RL from the Search-QA grounded clone (run_searchqa_grounded.sh, 30 steps): GRPO and SDAR with the paper's
# Search-QA configs sized for 2 CPU cores (B 4 x G 4, T 1.0, LoRA r16 over bf16, lr 1e-4, reward = exact match),
# one seed, the two runs side by side on one thread each; greedy evaluation on 50 held-out questions at steps 0, 8
# and 16. Resumable: run it again to continue. Run from anywhere; it runs the checkout it lives in.
cd "$(dirname "$0")/../../.."
export MALLOC_MMAP_THRESHOLD_=131072
exec python -m sdar_train.miniature.real_model --env searchqa --out runs/real --stages arms,report \
  --warm runs/real/searchqa_grounded/final --arms grpo,sdar --seeds 0 --rl_steps 16 --rl_tasks_per_step 4 --rl_group_size 4 \
  --rl_eval_every 8 --rl_eval_episodes 50 --threads 1 --parallel 2
