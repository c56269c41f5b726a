"""Shared fixtures. Everything runs offline on the CPU against the real engines and data."""

from __future__ import annotations

import pytest

from sdar_envs.alfworld.data import TASK_TYPES, list_tasks


def sample_per_type(split: str, per_type: int) -> list:
    """The first ``per_type`` games of each task type: a fixed, type-balanced sample."""
    tasks = list_tasks(split)
    out = []
    for task_type in TASK_TYPES:
        out += [t for t in tasks if t.task_type == task_type][:per_type]
    return out


@pytest.fixture(scope="session")
def valid_seen_tasks() -> list:
    return list_tasks("valid_seen")
