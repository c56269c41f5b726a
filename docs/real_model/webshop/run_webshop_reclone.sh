#!/usr/bin/env bash
# WebShop cloning from today's shopper (2026-12-05: whole named values only, in the instruction's order),
# EXPERT=shopper (its commands) or EXPERT=checklist (its whole reply, the thought on a product page listing
# the options it has still to click), continued from the packaged 40-step warm start
# (sdar_train/miniature/warmstart_smollm2_webshop_40steps) with its recipe (LoRA r16 over bf16, lr 2e-4,
# 4 train goals a step, mini-batches of 4, 30% of the demonstrations with the teacher's prompt), on new
# train goals (seed 2; seeds 0 and 1 drew the earlier phases'), with the in-run evaluation (20 test goals,
# greedy, every 10 steps). Resumable: run it again.
# Then: python -m sdar_train.eval --env SDAR/WebShop-v0 --model runs/real/webshop_$EXPERT/final \
#   --split test --episodes 100 --temperature 0 --max_response_tokens 64 --dtype bfloat16 --out <json>
cd "$(git rev-parse --show-toplevel)"
EXPERT=${EXPERT:-shopper}
OUT=runs/real/webshop_$EXPERT
RESUME=$([ -d $OUT/checkpoints ] && echo "--resume true" || echo "")
export MALLOC_MMAP_THRESHOLD_=131072
exec .venv/bin/python -m sdar_train --config webshop_sft.yaml --model sdar_train/miniature/warmstart_smollm2_webshop_40steps \
  --env_kwargs "{\"split\": \"train\", \"expert\": \"$EXPERT\"}" \
  --steps "${STEPS:-20}" --tasks_per_step 4 --group_size 1 --lora_r 16 --lora_alpha 32 --lr 2e-4 \
  --micro_batch_size 2 --mini_batch_size 4 --max_response_tokens 64 --sft_skills_share 0.3 \
  --eval_every 10 --eval_episodes 20 --eval_temperature 0 --generation_batch_size 20 --save_every 2 \
  --keep_checkpoints 1 --progress false --seed 2 --output_dir $OUT $RESUME
