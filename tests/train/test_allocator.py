"""A long CPU run's resident memory tracks what it holds: freed tensors go back to the system
(sdar_train/allocator.py), which glibc's default, rising mmap threshold stops after the first large free."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from sdar_train.allocator import fix_mmap_threshold

# 100 tensors of 4 MiB, each followed by a small block that stays (as a step's small objects do), then freed
RETURNED = textwrap.dedent(
    """
    import os, sys, torch
    from sdar_train.allocator import fix_mmap_threshold
    if sys.argv[1] == "fixed":
        print(fix_mmap_threshold(), file=sys.stderr)

    def resident() -> int:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    del_me = torch.ones(1 << 20)
    del del_me  # one large free: glibc raises its threshold above 4 MiB unless it is fixed
    tensors, kept = [], []
    for _ in range(100):
        tensors.append(torch.ones(1 << 20))
        kept.append(bytearray(8192))
    before = resident()
    del tensors
    print((before - resident()) / (100 * (4 << 20)))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_tensors_go_back_to_the_system_once_the_threshold_is_fixed():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}

    def returned(mode: str) -> float:
        done = subprocess.run([sys.executable, "-c", RETURNED, mode], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return float(done.stdout.split()[-1])

    # glibc's default keeps the freed pages; fixed, nearly all 400 MiB go back
    assert returned("default") < 0.2
    assert returned("fixed") > 0.9


def test_the_users_own_setting_stands(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert fix_mmap_threshold() == "MALLOC_MMAP_THRESHOLD_=1048576 (set by the user)"
