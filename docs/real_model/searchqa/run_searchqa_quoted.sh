#!/usr/bin/env bash
# Search-QA warm start of SmolLM2-135M-Instruct cloned from the quoting expert (expert=quoted: the grounded
# expert's answer after <think> quoting the evidence sentence around it, at most 16 words), the recipe of
# run_searchqa_grounded.sh except the response limit (96, the env's: a quoted reply is up to 57 tokens).
# Resumable: run it again to continue (STEPS=60 to go on). THREADS (default 2) sets the torch threads.
cd "$(dirname "$0")/../../.."
OUT=runs/real/searchqa_quoted
RESUME=$([ -d $OUT/checkpoints ] && echo "--resume true" || echo "")
export MALLOC_MMAP_THRESHOLD_=131072
python -m sdar_train --config searchqa_sft.yaml --model smollm2-135m-instruct --env_kwargs '{split: train, expert: quoted}' \
  --steps "${STEPS:-30}" --tasks_per_step 8 --group_size 1 --bf16 true --lora_r 16 --lora_alpha 32 --lr 2e-4 --micro_batch_size 2 \
  --max_response_tokens 96 --sft_skills_share 0.3 --eval_every 0 --eval_episodes 0 --save_every 5 \
  --keep_checkpoints 1 --progress false --cpu_threads "${THREADS:-2}" --output_dir $OUT $RESUME
# held-out evaluation (greedy, the 200 test questions evenly spaced that every Search-QA evaluation here uses):
#   python -m sdar_train.eval --env SDAR/SearchQA-v0 --model $OUT/final --split test --episodes 200 \
#     --temperature 0 --max_response_tokens 96 --dtype bfloat16 --out eval-quoted30-200.json
