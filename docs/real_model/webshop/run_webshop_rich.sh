#!/usr/bin/env bash
# WebShop cloning on the original WebShop's `text_rich` observations (observation_mode="text_rich": one element
# a line, buttons marked, and the options already clicked marked `[clicked button] x [clicked button_]`), so
# that which named options are still to click is on the page, not only in the 2-turn history. Otherwise
# run_webshop_reclone.sh's EXPERT=shopper run exactly (the fixed shopper, over the packaged 40-step warm start,
# LoRA r16 over bf16, lr 2e-4, 4 train goals a step, mini-batches of 4, 30% with the teacher's prompt, seed 2:
# the same train goals), 20 steps, then the 100 test goals (every fifth of the first 500, greedy, the 64-token
# reply limit) on text_rich as the run's final evaluation (eval.json). Its text-mode twin is
# reclone/shopper/eval-20steps-none-100.json. Resumable: run it again.
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:-runs/real/webshop_rich}
RESUME=$([ -d $OUT/checkpoints ] && echo "--resume true" || echo "")
export MALLOC_MMAP_THRESHOLD_=131072
exec .venv/bin/python -m sdar_train --config webshop_sft.yaml --model sdar_train/miniature/warmstart_smollm2_webshop_40steps \
  --env_kwargs '{"split": "train", "expert": "shopper", "observation_mode": "text_rich"}' \
  --steps "${STEPS:-20}" --tasks_per_step 4 --group_size 1 --lora_r 16 --lora_alpha 32 --lr 2e-4 \
  --micro_batch_size 2 --mini_batch_size 4 --max_response_tokens 64 --sft_skills_share 0.3 \
  --eval_every 0 --eval_episodes 100 --eval_temperature 0 --generation_batch_size 20 --save_every 2 \
  --keep_checkpoints 1 --progress false --seed 2 --output_dir $OUT $RESUME
