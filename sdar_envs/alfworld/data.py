"""Where the official ALFWorld games come from, and the deterministic task list of each split.

Resolution order for the folder that holds ``json_2.1.1/<split>/...`` (the layout ``alfworld-download``
produces):

1. ``data_dir`` passed to the environment;
2. ``$ALFWORLD_DATA`` (a user's own ``alfworld-download`` folder), if it holds the split;
3. the archives shipped in this package (``sdar_envs/alfworld/data/*.tar.xz``, the official games,
   see SOURCE.md there), unpacked on first use into ``$SDAR_CACHE_DIR/alfworld`` (default
   ``~/.cache/sdar/alfworld``). The train archive (3553 games, ~940 MB unpacked) is only unpacked
   when the train split is asked for.

Task lists are sorted by path, never left in file-system order, so task ``i`` of a split is the same
game on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["SPLITS", "TASK_TYPES", "AlfworldTask", "DataError", "data_root", "list_tasks"]

# alfworld's task-type ids (alfworld.agents.environment.alfred_tw_env.TASK_TYPES) and our short names.
TASK_TYPES: dict[str, str] = {
    "pick_and_place_simple": "pick",
    "look_at_obj_in_light": "look",
    "pick_clean_then_place_in_recep": "clean",
    "pick_heat_then_place_in_recep": "heat",
    "pick_cool_then_place_in_recep": "cool",
    "pick_two_obj_and_place": "pick_two",
}
SPLITS = ("train", "valid_seen", "valid_unseen", "valid_train")
_ARCHIVES = {
    "train": "json_2.1.1_official_train.tar.xz",
    "valid_seen": "json_2.1.1_official_valid.tar.xz",
    "valid_unseen": "json_2.1.1_official_valid.tar.xz",
    "valid_train": "json_2.1.1_official_valid.tar.xz",
}
_SHA256 = {
    "json_2.1.1_official_train.tar.xz": "4fc81494231e43e068444a9b9a80c7505e5e3776b27202ea1bc15bbba4a43e81",
    "json_2.1.1_official_valid.tar.xz": "7387c11361726f299f40484581d3415903deba8ba56b0bb3ef53c1c7472b54c2",
}
PACKAGE_DATA = Path(__file__).parent / "data"


class DataError(RuntimeError):
    """The ALFWorld games cannot be found or unpacked; the message says where we looked."""


@dataclass(frozen=True)
class AlfworldTask:
    task_id: str  # "<split>/<task folder>/<trial>", stable across machines
    game_file: str
    task_type: str  # alfworld's name, e.g. "pick_clean_then_place_in_recep"

    @property
    def task_type_short(self) -> str:
        return TASK_TYPES[self.task_type]


def cache_dir() -> Path:
    return Path(os.environ.get("SDAR_CACHE_DIR", Path.home() / ".cache" / "sdar")) / "alfworld"


def _has_split(root: Path, split: str) -> bool:
    return (root / "json_2.1.1" / split).is_dir()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unpack(archive: Path, dest: Path) -> None:
    """Unpack into a temporary folder beside ``dest``, then rename: a crash or a second process
    racing us never leaves a half-unpacked split behind."""
    if _sha256(archive) != _SHA256[archive.name]:
        raise DataError(f"{archive} does not match its recorded sha256; re-copy it from the repository")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest))
    try:
        with tarfile.open(archive, "r:xz") as tar:
            tar.extractall(tmp, filter="data")
        for split_dir in (tmp / "json_2.1.1").iterdir():
            target = dest / "json_2.1.1" / split_dir.name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                split_dir.rename(target)
            except OSError:
                if not target.is_dir():  # somebody else won the race when it exists: fine
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def data_root(split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding ``json_2.1.1/<split>``, unpacking the shipped archive if needed."""
    if split not in SPLITS:
        raise ValueError(f"unknown ALFWorld split {split!r}; choose one of {SPLITS}")
    if data_dir is not None:
        root = Path(data_dir)
        if not _has_split(root, split):
            raise DataError(f"{root} has no json_2.1.1/{split} folder (the layout alfworld-download makes)")
        return root
    env = os.environ.get("ALFWORLD_DATA")
    if env and _has_split(Path(env), split):
        return Path(env)
    root = cache_dir()
    if not _has_split(root, split):
        archive = PACKAGE_DATA / _ARCHIVES[split]
        if not archive.is_file():
            raise DataError(
                f"no ALFWorld games for split {split!r}: not in data_dir, not in $ALFWORLD_DATA={env!r}, "
                f"and the shipped archive {archive} is missing"
            )
        _unpack(archive, root)
    return root


@lru_cache(maxsize=16)
def _list_tasks(root: str, split: str) -> tuple[AlfworldTask, ...]:
    split_dir = Path(root) / "json_2.1.1" / split
    tasks = []
    # The same filters as alfworld's AlfredTWEnv.collect_game_files, in sorted (not os.walk) order.
    for game in sorted(split_dir.glob("*/*/game.tw-pddl")):
        trial = game.parent
        if "movable" in str(trial) or "Sliced" in str(trial) or not (trial / "traj_data.json").is_file():
            continue
        task_type = trial.parent.name.split("-", 1)[0]
        if task_type not in TASK_TYPES:
            continue
        task_id = f"{split}/{trial.parent.name}/{trial.name}"
        tasks.append(AlfworldTask(task_id, str(game), task_type))
    if not tasks:
        raise DataError(f"no games found under {split_dir}")
    return tuple(tasks)


def list_tasks(
    split: str, task_types: list[str] | tuple[str, ...] | None = None, data_dir: str | os.PathLike | None = None
) -> list[AlfworldTask]:
    """The split's solvable games in a fixed order, optionally restricted to some task types.

    ``task_types`` accepts alfworld's names ("pick_heat_then_place_in_recep") or our short ones ("heat").
    """
    tasks = list(_list_tasks(str(data_root(split, data_dir)), split))
    if task_types:
        wanted = set()
        short_to_long = {v: k for k, v in TASK_TYPES.items()}
        for t in task_types:
            if t not in TASK_TYPES and t not in short_to_long:
                raise ValueError(f"unknown ALFWorld task type {t!r}; choose from {sorted(short_to_long)}")
            wanted.add(short_to_long.get(t, t))
        tasks = [t for t in tasks if t.task_type in wanted]
    return tasks


def read_walkthrough(game_file: str) -> list[str]:
    with open(game_file) as f:
        return list(json.load(f).get("walkthrough") or [])
