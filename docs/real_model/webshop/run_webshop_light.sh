#!/usr/bin/env bash
# The light WebShop warm start: the full one's recipe (run_webshop_warm.sh, phase 2's mini-batches of 4) stopped
# after 5 steps (20 train goals, about 100 demonstrated turns), then the premise on the same 50 test goals as the
# full one's (greedy, without and with the teacher's skill block). One torch thread: 19 min to clone, 16 and 9 min
# to evaluate, beside another job. Resumable: run it again to continue.
cd "$(git rev-parse --show-toplevel)"
OUT=runs/real/webshop_light
export MALLOC_MMAP_THRESHOLD_=131072
RESUME=$([ -d $OUT/checkpoints ] && echo "--resume true" || echo "")
[ -d $OUT/final ] || .venv/bin/python -m sdar_train --config webshop_sft.yaml --model smollm2-135m-instruct --steps 5 \
  --tasks_per_step 4 --group_size 1 --lora_r 16 --lora_alpha 32 --lr 2e-4 --micro_batch_size 2 --mini_batch_size 4 \
  --max_response_tokens 64 --sft_skills_share 0.3 --eval_every 0 --eval_episodes 0 --save_every 1 --keep_checkpoints 1 \
  --progress false --cpu_threads 1 --output_dir $OUT $RESUME
for skills in none teacher; do
  [ -f premise-light5-$skills-50.json ] || .venv/bin/python -m sdar_train.eval --env SDAR/WebShop-v0 --model $OUT/final \
    --split test --episodes 50 --temperature 0 --dtype bfloat16 --seed 0 --max_response_tokens 64 --skills $skills \
    --out premise-light5-$skills-50.json
done
