#!/usr/bin/env bash
# Wait for the step-15 evaluation and checkpoint, stop the warm start there, export it, then the premise.
cd "$(dirname "$0")"
OUT=runs/real/searchqa_warm
until [ -d $OUT/checkpoints/step_000015 ] && [ -f $OUT/checkpoints/step_000015/trainer_state.json ]; do sleep 10; done
sleep 5
pkill -f "output_dir runs/real/searchqa_warm" ; pkill -f run_searchqa_warm.sh; sleep 3
/work/main/.venv/bin/python -m sdar_train --config searchqa_sft.yaml --model smollm2-135m-instruct \
  --steps 15 --tasks_per_step 8 --group_size 1 --bf16 true --lora_r 16 --lora_alpha 32 --lr 2e-4 --micro_batch_size 2 \
  --max_response_tokens 64 --sft_skills_share 0.3 --eval_every 15 --eval_episodes 0 --save_every 5 \
  --keep_checkpoints 1 --progress false --output_dir $OUT --resume true
E="env -C /work/wt-premise /work/main/.venv/bin/python -m sdar_train.eval --env SDAR/SearchQA-v0 --split test --temperature 0 --max_response_tokens 64 --dtype bfloat16"
mkdir -p runs/premise
$E --model /work/wt-exp/$OUT/final --episodes 50 --skills teacher --out /work/wt-exp/runs/premise/premise-warm-teacher-50.json
$E --model /work/wt-exp/$OUT/final --episodes 50 --skills none --out /work/wt-exp/runs/premise/premise-warm-none-50.json
$E --model smollm2-135m-instruct --episodes 25 --skills none --out /work/wt-exp/runs/premise/premise-zeroshot-none-25.json
$E --model smollm2-135m-instruct --episodes 25 --skills teacher --out /work/wt-exp/runs/premise/premise-zeroshot-teacher-25.json
echo ALLDONE
