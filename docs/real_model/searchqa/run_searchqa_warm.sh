#!/usr/bin/env bash
# Search-QA warm start of SmolLM2-135M-Instruct (LoRA r16 over a bf16 base), resumable: run it again to continue.
cd "$(dirname "$0")"
OUT=runs/real/searchqa_warm
RESUME=$([ -d $OUT/checkpoints ] && echo "--resume true" || echo "")
exec /work/main/.venv/bin/python -m sdar_train --config searchqa_sft.yaml --model smollm2-135m-instruct \
  --steps 30 --tasks_per_step 8 --group_size 1 --bf16 true --lora_r 16 --lora_alpha 32 --lr 2e-4 --micro_batch_size 2 \
  --max_response_tokens 64 --sft_skills_share 0.3 --eval_every 15 --eval_episodes 200 --save_every 5 \
  --keep_checkpoints 1 --progress false --output_dir $OUT $RESUME
