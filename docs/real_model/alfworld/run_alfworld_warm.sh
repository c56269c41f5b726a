#!/usr/bin/env bash
# ALFWorld warm starts of SmolLM2-135M-Instruct as they ran: the recipe of sdar_train.miniature.real_model
# (warmstart_args: LoRA r16 over a bf16 base, lr 2e-4, an optimizer step every 4 demonstrated turns, 30% of
# demonstrations shown the teacher's skill block) on the train split, evaluated apart (below) rather than
# during training. `walkthrough` (what behaviour cloning used then): the game's walkthrough, 20 steps, one
# torch thread. `searcher` (the default now): the prompt-only searcher, 4 steps, two threads (it ran with
# --steps 8, was stopped at its step-4 checkpoint for time, and exported by resuming with --steps 4; then
# continued to 10 as `STEPS=10 THREADS=1 run_alfworld_warm.sh searcher`). `explained`: the searcher's command
# after a think naming the task's object and whether it is in hand, in sight or not here, run as
# `STEPS=10 run_alfworld_warm.sh explained`. Resumable: run it again to continue.
cd "$(git rev-parse --show-toplevel)"
EXPERT=${1:-searcher}
OUT=runs/real/alfworld_$EXPERT
STEPS=${STEPS:-$([ "$EXPERT" = walkthrough ] && echo 20 || echo 4)}
THREADS=${THREADS:-$([ "$EXPERT" = walkthrough ] && echo 1 || echo 2)}
RESUME=$([ -d $OUT/checkpoints ] && echo "--resume true" || echo "")
export MALLOC_MMAP_THRESHOLD_=131072  # holds a CPU run near 5 GB (bench/allocator.py)
exec .venv/bin/python -m sdar_train --config alfworld_sft.yaml --model smollm2-135m-instruct \
  --env_kwargs "{split: train, expert: $EXPERT}" --output_dir $OUT --steps $STEPS --tasks_per_step 4 --group_size 1 --lora_r 16 --lora_alpha 32 --bf16 true \
  --lr 2e-4 --micro_batch_size 2 --max_response_tokens 48 --mini_batch_size 4 --sft_skills_share 0.3 \
  --eval_every 0 --eval_episodes 0 --save_every 2 --keep_checkpoints 1 --cpu_threads $THREADS --progress false $RESUME
# The evaluations (valid_unseen, games evenly spaced, greedy, bf16; --skills teacher for the teacher's prompt):
#   python -m sdar_train.eval --env SDAR/ALFWorld-v0 --model $OUT/final --split valid_unseen --episodes 20 \
#     --temperature 0 --dtype bfloat16 --seed 0 --max_response_tokens 48 --skills none --out premise-$EXPERT-none-20.json
