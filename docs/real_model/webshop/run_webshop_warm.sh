#!/usr/bin/env bash
# The WebShop warm start of SmolLM2-135M-Instruct as it ran (LoRA r16 over a bf16 base), cloned from the env's
# instruction-only shopper (WebShopEnv.demonstration_kwargs: expert="shopper"). Steps 0-12 ran with the
# config's mini-batches of 64 turns (one optimizer step per training step); the step-10 evaluation scored 0
# (the model still copied 'search[<your query>]'), so steps 13-19 ran with mini-batches of 4 (about five
# optimizer steps per training step), resumed from the step-12 checkpoint. For a new run use phase 2's
# settings from the start (sdar_train.miniature.real_model does). Phase 3 continues the same run toward 40 steps
# (it was stopped after its step-30 evaluation and checkpoint). Resumable: run a phase again to continue.
cd "$(git rev-parse --show-toplevel)"
OUT=runs/real/webshop_warm
COMMON="--config webshop_sft.yaml --model smollm2-135m-instruct --steps 20 --tasks_per_step 4 --group_size 1
  --lora_r 16 --lora_alpha 32 --lr 2e-4 --micro_batch_size 2 --max_response_tokens 64 --sft_skills_share 0.3
  --eval_every 10 --eval_episodes 20 --eval_temperature 0 --generation_batch_size 20 --save_every 2
  --keep_checkpoints 1 --progress false --output_dir $OUT"
RESUME=$([ -d $OUT/checkpoints ] && echo "--resume true" || echo "")
if [ "${1:-2}" = 1 ]; then  # phase 1: stop it once checkpoints/step_000012 exists
  exec .venv/bin/python -m sdar_train $COMMON $RESUME
fi
if [ "${1:-2}" = 3 ]; then  # phase 3: the continuation (steps 20-29 so far)
  exec .venv/bin/python -m sdar_train ${COMMON/--steps 20/--steps 40} --mini_batch_size 4 --resume true
fi
exec .venv/bin/python -m sdar_train $COMMON --mini_batch_size 4 --resume true  # phase 2
