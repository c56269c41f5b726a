#!/usr/bin/env bash
# RL from the packaged 40-step WebShop warm start (sdar_train/miniature/warmstart_smollm2_webshop_40steps: 0.637
# and 9 exact purchases on the 100 test goals, greedy) on the reference's sparse reward (10 x won), GRPO and SDAR,
# seed 0, B=2 tasks x G=4 episodes a step, groups whose episodes all scored alike skipped (DAPO's filter: on a
# sparse reward most groups are flat and cost only their rollout), the held-out evaluation on the same 100 goals
# as the warm start's (every fifth of the first 500, greedy) at step STEPS. Two runs at once, one torch thread
# each. The warm start's own evaluation is the checked-in eval-40steps-none-100.json (the same arguments).
# Resumable: run it again to continue.
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:-runs/real_won}
WARM=sdar_train/miniature/warmstart_smollm2_webshop_40steps
STEPS=${STEPS:-20}
mkdir -p "$OUT/webshop/arms"
start="$OUT/webshop/arms/start-sdar_train_miniature_warmstart_smollm2_webshop_40steps.json"
[ -f "$start" ] || cp docs/real_model/webshop/eval-40steps-none-100.json "$start"
MALLOC_MMAP_THRESHOLD_=131072 exec .venv/bin/python -m sdar_train.miniature.real_model --env webshop --out "$OUT" \
  --stages arms,report --warm "$WARM" --train_reward won --skip_flat_groups --arms grpo,sdar --seeds 0 \
  --rl_steps "$STEPS" --rl_tasks_per_step 2 --rl_group_size 4 --rl_eval_every "$STEPS" --rl_eval_episodes 100 \
  --threads 1 --parallel 2
