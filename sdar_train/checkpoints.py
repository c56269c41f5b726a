"""Checkpoints that resume exactly or refuse to: Accelerate's state (model, optimizer, RNG) plus the step
and the skill memory, one folder per step under ``output_dir/checkpoints``; the oldest are pruned.

A save is written to ``checkpoints/.step_NNNNNN.partial`` and renamed into place once every file is
there, so a process killed while saving (``kill -9``, a preempted node) leaves the previous checkpoint
as the latest, and ``--resume auto`` continues from it.

A checkpoint is checked before it is loaded (:func:`check`): Accelerate skips an unreadable RNG state with
an info line only and reports other damage as deep tracebacks, so a damaged file is named here in one
line (:class:`~sdar_train.errors.CheckpointError`) with what to do about it.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

from sdar_train.errors import CheckpointError

__all__ = ["check", "latest", "load", "save", "trim_metrics"]


def save(accelerator: Any, out: Path, step: int, memory: Any = None, *, keep: int = 2) -> Path:
    """``out/checkpoints/step_NNNNNN``: Accelerate's state, ``trainer_state.json`` and ``memory``'s
    ``skills.yaml`` (a :class:`skills.SkillLibrary`, or None); keeps the newest ``keep``."""
    path = out / "checkpoints" / f"step_{step:06d}"
    partial = path.with_name(f".{path.name}.partial")
    if accelerator.is_main_process and partial.exists():  # the remains of a save that was killed
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process has written its part
    if accelerator.is_main_process:
        (partial / "trainer_state.json").write_text(json.dumps({"step": step}))
        if memory is not None:
            memory.save(partial / "skills.yaml")
        if path.exists():  # the same step saved before (a resumed run repeating it)
            shutil.rmtree(path)
        os.replace(partial, path)
        done = sorted((out / "checkpoints").glob("step_*"))
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def trim_metrics(metrics_file: Path, step: int) -> None:
    """Drop from ``metrics.jsonl`` what the run logged after checkpoint ``step`` (the steps a resume will
    repeat), so the file holds each step once: training rows of steps ``< step`` and evaluations up to it."""
    if not metrics_file.exists():
        return
    kept = []
    for line in metrics_file.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by the kill
            continue
        evaluation = "time_s" not in row  # evaluations log steps done; training rows the step's index
        if row.get("step", 0) < step or (evaluation and row.get("step", 0) == step):
            kept.append(line)
    tmp = metrics_file.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, metrics_file)


def latest(out: Path) -> Path | None:
    """The newest checkpoint folder whose step was written (written last), or None."""
    done = [d for d in sorted((out / "checkpoints").glob("step_*")) if (d / "trainer_state.json").exists()]
    return done[-1] if done else None


def load(accelerator: Any, path: Path, *, deepspeed: bool = False, sharded: bool = False) -> int:
    """Check ``path`` (:func:`check`), load it into ``accelerator``'s prepared objects; returns its step."""
    check(accelerator, path, deepspeed=deepspeed, sharded=sharded)
    try:
        accelerator.load_state(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be loaded ({type(e).__name__})") from e
    return int(json.loads((path / "trainer_state.json").read_text())["step"])


def _safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file cannot be whole (missing, bad header, shorter than its header says),
    checked from the header alone, or None."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n < (100 << 20) else None
        if not isinstance(header, dict):
            return "unreadable header"
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return None if path.stat().st_size >= 8 + n + end else "truncated"
    except FileNotFoundError:
        return "missing"
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
        return "unreadable header"


def _zip_problem(path: Path) -> str | None:
    """Why a torch-saved (zip) file cannot be whole, from its zip directory alone (the file can be many
    GB: loading it is left to the resume), or None."""
    try:
        zipfile.ZipFile(path).close()
    except FileNotFoundError:
        return "missing"
    except (zipfile.BadZipFile, OSError) as e:
        return f"unreadable ({type(e).__name__})"
    return None


def check(accelerator: Any, path: Path, *, deepspeed: bool = False, sharded: bool = False) -> None:
    """Refuse a checkpoint that would resume inexactly: Accelerate skips an unreadable RNG state with
    an info line only, and reports other damage as deep tracebacks."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
            raise ValueError("no non-negative integer 'step'")
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / 'trainer_state.json'}: unreadable ({e})") from None
    retry = f"remove {path} to resume from an earlier checkpoint"
    rng = path / f"random_states_{accelerator.process_index}.pkl"
    if not rng.is_file():
        raise CheckpointError(f"{rng}: missing, so the resume would not be exact; {retry}")
    from accelerate.utils import load

    try:
        with warnings.catch_warnings():  # torch's unpickler comments on a damaged file's protocol
            warnings.simplefilter("ignore")
            states = load(rng)  # Accelerate's own loader: weights only, no code runs; the file is small
    except Exception as e:
        raise CheckpointError(
            f"{rng}: unreadable ({type(e).__name__}), so the resume would not be exact; {retry}"
        ) from None
    if not (isinstance(states, dict) and "torch_manual_seed" in states):
        raise CheckpointError(f"{rng}: not an RNG state, so the resume would not be exact; {retry}")
    if deepspeed:  # DeepSpeed writes each rank's partition, then names the folder in `latest`
        try:
            folder = path / (path / "latest").read_text().strip()
        except FileNotFoundError:
            raise CheckpointError(f"{path / 'latest'}: missing, so DeepSpeed's save did not finish; {retry}") from None
        mine = folder / f"zero_pp_rank_{accelerator.process_index}_mp_rank_00_optim_states.pt"
        if problem := _zip_problem(mine):
            raise CheckpointError(f"{mine}: {problem}; {retry}")
        return
    if sharded:  # torch.distributed.checkpoint folders: their metadata says the save finished
        for name in ("pytorch_model_fsdp_0", "optimizer_0"):
            if not (path / name / ".metadata").is_file():
                raise CheckpointError(f"{path / name}: missing or unfinished (no .metadata); {retry}")
        return
    optimizer = path / "optimizer.bin"
    if problem := _zip_problem(optimizer):
        raise CheckpointError(f"{optimizer}: {problem}" + ("" if problem == "missing" else f"; {retry}"))
    for model_file in sorted(path.glob("model*.safetensors")) or [path / "model.safetensors"]:
        problem = _safetensors_problem(model_file)
        if problem:
            raise CheckpointError(f"{model_file}: {problem}; {retry}")
