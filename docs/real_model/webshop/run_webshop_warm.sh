#!/usr/bin/env bash
# WebShop warm start of SmolLM2-135M-Instruct (LoRA r16 over a bf16 base), cloned from the env's
# instruction-only shopper (WebShopEnv.demonstration_kwargs: expert="shopper"); resumable: run it again to continue.
cd "$(git rev-parse --show-toplevel)"
OUT=runs/real/webshop_warm
RESUME=$([ -d $OUT/checkpoints ] && echo "--resume true" || echo "")
exec .venv/bin/python -m sdar_train --config webshop_sft.yaml --model smollm2-135m-instruct \
  --steps 20 --tasks_per_step 4 --group_size 1 --lora_r 16 --lora_alpha 32 --lr 2e-4 --micro_batch_size 2 \
  --max_response_tokens 64 --sft_skills_share 0.3 --eval_every 10 --eval_episodes 20 --eval_temperature 0 \
  --generation_batch_size 20 --save_every 2 --keep_checkpoints 1 --progress false --output_dir $OUT $RESUME
