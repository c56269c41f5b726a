"""Which precision a run computes in when the user does not say (``--bf16`` unset, ``eval --dtype auto``)."""

from __future__ import annotations

import pytest
import torch

from sdar_train.models import SMOLLM2, resolve_model_path
from sdar_train.precision import MIN_CPU_BF16_WIDTH, choose_bf16, cpu_has_native_bf16, model_width


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) AVX512-BF16 and AMX: the choice must follow it."""

    def set_to(value: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: value)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: value)

    return set_to


def test_an_explicit_choice_wins_and_gpus_run_bf16():
    assert choose_bf16(True, cuda=False, model="tiny") == (True, "asked")
    assert choose_bf16(False, cuda=True, model=SMOLLM2) == (False, "asked")
    assert choose_bf16(None, cuda=True, model="tiny")[0] is True


def test_on_a_native_bf16_cpu_a_real_model_runs_bf16_and_the_tiny_model_fp32(native_bf16):
    native_bf16(True)
    assert cpu_has_native_bf16()
    assert model_width(resolve_model_path(SMOLLM2)) == 576 >= MIN_CPU_BF16_WIDTH
    on, why = choose_bf16(None, cuda=False, model=SMOLLM2)
    assert on and "576-wide" in why
    off, why = choose_bf16(None, cuda=False, model="tiny")
    assert not off and "128-wide" in why


def test_a_cpu_without_native_bf16_runs_fp32_whatever_the_model(native_bf16):
    native_bf16(False)
    assert choose_bf16(None, cuda=False, model=SMOLLM2) == (False, "auto: this CPU has no native bf16")
