"""Freed tensor memory returned to the system on CPU, so that a long run's resident memory tracks what it
holds.

glibc's ``malloc`` serves blocks above its mmap threshold with a mapping of their own, unmapped when freed,
and the rest from its heap arenas, which keep freed pages. The threshold starts at 128 KiB but rises each
time a mapped block is freed, up to 32 MiB, so after a few steps most activation tensors come from the
arenas, and their pages stay with the process after the step. Measured on a real-model RL run (SmolLM2-135M,
LoRA, WebShop, 2 CPU cores): resident memory 9.8 GB in the first step's update and 12.7-13.4 GB by the
tenth, when the out-of-memory killer stopped it; the same run resumed with the threshold fixed at 128 KiB
peaked at 4.4 GB in its update and fell back to 1.6-2.7 GB between phases. Fixing the threshold
(``mallopt(M_MMAP_THRESHOLD)``, as ``MALLOC_MMAP_THRESHOLD_`` does) stops it from rising.

It costs time where compute per byte is small: every block above the threshold is a fresh mapping whose pages
the kernel zeroes. ``bench/allocator.py`` measured the tiny test model's training step at 1.5x the CPU time.
So ``python -m sdar_train`` fixes it at start (a long run is what grows), and a process that only imports the
trainer keeps glibc's default.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "allocator_state", "fix_mmap_threshold"]

MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept from the first allocation on
_M_MMAP_THRESHOLD = -3  # <malloc.h>
_state = ""


def allocator_state() -> str:
    """What :func:`fix_mmap_threshold` did in this process ("" if it was not called)."""
    return _state


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> str:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process; says what it did. Nothing where
    the user set ``MALLOC_MMAP_THRESHOLD_`` (their value stands) or the C library is not glibc."""
    global _state
    _state = _fix(threshold)
    return _state


def _fix(threshold: int) -> str:
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return f"MALLOC_MMAP_THRESHOLD_={os.environ['MALLOC_MMAP_THRESHOLD_']} (set by the user)"
    if not sys.platform.startswith("linux"):
        return "left as it is (not Linux)"
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries: no glibc mallopt
        return "left as it is (not glibc)"
    if mallopt(_M_MMAP_THRESHOLD, threshold) != 1:
        return "left as it is (mallopt refused)"
    return f"mmap threshold fixed at {threshold // 1024} KiB: freed tensors go back to the system"
