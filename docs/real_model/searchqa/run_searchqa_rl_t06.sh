#!/usr/bin/env bash
# RL from the 100-step grounded clone at rollout temperature 0.6 (T 1.0 gave 4% train success from the 30-step
# clone, so almost every group of 4 was flat): GRPO and SDAR with the paper's Search-QA configs sized for 2 CPU
# cores (B 4 x G 4, LoRA r16 over bf16, lr 1e-4, reward = exact match, kl 0.001), seed 0, greedy evaluation on
# 50 held-out questions at steps 0, 6 and 12; then GRPO again with --skip_flat_groups true, the same start,
# seed and settings. As it ran (4 December, fifth sitting), one thread per run, two runs at a time:
#   ARMS=grpo, then ARMS=sdar 17 minutes later, then the skip run once GRPO had finished.
# Resumable: run it again to continue. Run from anywhere; it runs the checkout it lives in.
cd "$(dirname "$0")/../../.."
export MALLOC_MMAP_THRESHOLD_=131072
OUT=runs/real/searchqa_t06
python -m sdar_train.miniature.real_model --env searchqa --out $OUT --stages arms \
  --warm runs/real/searchqa_grounded100 --arms "${ARMS:-grpo,sdar}" --seeds 0 --rl_steps 12 --rl_tasks_per_step 4 \
  --rl_group_size 4 --rl_temperature 0.6 --rl_eval_every 6 --rl_eval_episodes 50 --threads 1 --parallel "${PARALLEL:-2}"
# the skip run: GRPO's config with --skip_flat_groups true (its final evaluation, eval.json, was copied to
# eval-step6.json before the run was continued to 12 steps)
python -m sdar_train --config $OUT/searchqa/arms/grpo-s0/config.json --output_dir $OUT/skip-grpo-s0 \
  --skip_flat_groups true --steps 12 --eval_every 6 --save_every 3 --resume auto --overwrite false
# then continued to 36 steps (--steps 36 --eval_every 12; eval.json at 12 copied to eval-step12.json first), and
# SDAR with the filter from the same start for 24 steps, the two side by side on one thread each:
python -m sdar_train --config $OUT/searchqa/arms/sdar-s0/config.json --output_dir $OUT/skip-sdar-s0 \
  --skip_flat_groups true --steps 24 --eval_every 12 --save_every 3 --resume auto --overwrite false
