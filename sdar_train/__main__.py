"""``python -m sdar_train`` / ``accelerate launch -m sdar_train``: train a policy on an SDAR/* env.

python -m sdar_train --config alfworld_sdar.yaml --steps 10 --model tiny
accelerate launch -m sdar_train --env SDAR/ALFWorld-v0 --algo grpo --model Qwen/Qwen2.5-3B-Instruct
"""

from __future__ import annotations

import os
import sys

from sdar_train.config import config_from_args
from sdar_train.errors import CheckpointError, ConfigError, TrainingError
from sdar_train.models import check_model


def main(argv: list[str] | None = None) -> int:
    """Bad settings, models and checkpoints end the run with one line naming what is wrong (exit 2);
    ``SDAR_DEBUG=1`` shows the traceback instead."""
    try:
        return _train(argv)
    except (ConfigError, CheckpointError, TrainingError) as e:
        if os.environ.get("SDAR_DEBUG"):
            raise
        print(f"sdar_train: error: {e}", file=sys.stderr)
        return 2


def _train(argv: list[str] | None) -> int:
    cfg = config_from_args(argv, description=__doc__)
    check_model(cfg.model)
    from sdar_train.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        history = trainer.train()
        final = trainer.save_model()
        report = trainer.evaluate() if cfg.eval_episodes > 0 else None  # every process calls it (it syncs)
        if report is not None:  # the final held-out point of the curve
            trainer.log_evaluation(cfg.steps, report)
        if trainer.accelerator.is_main_process:
            from sdar_train.report import write_plot

            write_plot(trainer.out / "metrics.jsonl", trainer.out / "curves.png", title=f"{cfg.algo} on {cfg.env}")
            if report is not None:
                from sdar_train.eval import print_report, write_report

                write_report(trainer.out / "eval.json", report)
                print_report(report, title=f"after {len(history)} {cfg.algo} steps")
            print(
                f"model: {final}; metrics: {trainer.metrics_file}; plot: {trainer.out / 'curves.png'}", file=sys.stderr
            )
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
