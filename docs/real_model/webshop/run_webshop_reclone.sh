#!/usr/bin/env bash
# WebShop cloning from today's shopper (2026-12-05: whole named values only, in the instruction's order),
# EXPERT=shopper (its commands) or EXPERT=checklist (its whole reply, the thought on a product page listing
# the options it has still to click), continued from the packaged 40-step warm start
# (sdar_train/miniature/warmstart_smollm2_webshop_40steps) with its recipe (LoRA r16 over bf16, lr 2e-4,
# 4 train goals a step, mini-batches of 4, 30% of the demonstrations with the teacher's prompt), on new
# train goals (seed 2; seeds 0 and 1 drew the earlier phases'), with the in-run evaluation (20 test goals,
# greedy, every 10 steps). Resumable: run it again.
# Variants, the same demonstrations otherwise:
#   OBS=text_rich   the original WebShop's text_rich pages (clicked options marked); ran with EVAL_EPISODES=0
#   LORA_R=0        full fine-tuning (bf16 autocast over fp32 weights, lr LR=2e-5); ran with EVAL_EPISODES=0
# Then: python -m sdar_train.eval --env SDAR/WebShop-v0 --model $OUT/final --split test --episodes 100 \
#   --temperature 0 --max_response_tokens 64 --dtype bfloat16 [--env_kwargs '{"observation_mode": "text_rich"}'] --out <json>
cd "$(git rev-parse --show-toplevel)"
EXPERT=${EXPERT:-shopper}
OBS=${OBS:-text}
LORA_R=${LORA_R:-16}
if [ "$LORA_R" = 0 ]; then LR=${LR:-2e-5}; TUNE="--lora_r 0 --bf16 true"; else LR=${LR:-2e-4}; TUNE="--lora_r $LORA_R --lora_alpha $((2 * LORA_R))"; fi
OUT=${OUT:-runs/real/webshop_$EXPERT$([ "$OBS" = text ] || echo "_$OBS")$([ "$LORA_R" = 0 ] && echo _full)}
RESUME=$([ -d $OUT/checkpoints ] && echo "--resume true" || echo "")
export MALLOC_MMAP_THRESHOLD_=131072
exec .venv/bin/python -m sdar_train --config webshop_sft.yaml --model sdar_train/miniature/warmstart_smollm2_webshop_40steps \
  --env_kwargs "{\"split\": \"train\", \"expert\": \"$EXPERT\", \"observation_mode\": \"$OBS\"}" \
  --steps "${STEPS:-20}" --tasks_per_step 4 --group_size 1 $TUNE --lr "$LR" \
  --micro_batch_size 2 --mini_batch_size 4 --max_response_tokens 64 --sft_skills_share 0.3 \
  --eval_every "${EVAL_EVERY:-10}" --eval_episodes "${EVAL_EPISODES:-20}" --eval_temperature 0 --generation_batch_size 20 \
  --save_every "${SAVE_EVERY:-2}" --keep_checkpoints 1 --progress false --seed 2 --output_dir $OUT $RESUME
