"""device.py: which precision training runs in, and the warning when bf16 would be slow."""

from __future__ import annotations

import pytest
import torch

from kidwhisper.device import cpu_has_native_bf16, pick_dtype, slow_precision_warning

CPU = torch.device("cpu")


def _native(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


def test_auto_is_full_precision_on_a_cpu_and_named_precisions_are_kept():
    assert pick_dtype("auto", CPU) is None
    assert pick_dtype("fp32", CPU) is None
    assert pick_dtype("bf16", CPU) is torch.bfloat16


@pytest.mark.parametrize(("avx512_bf16", "amx"), [(True, False), (False, True)])
def test_bf16_on_a_cpu_that_has_it_natively_says_nothing(monkeypatch, avx512_bf16, amx):
    _native(monkeypatch, avx512_bf16, amx)
    assert cpu_has_native_bf16()
    assert slow_precision_warning(torch.bfloat16, CPU) is None


def test_bf16_on_a_cpu_that_emulates_it_names_the_key_and_the_fix(monkeypatch):
    _native(monkeypatch, False, False)
    assert not cpu_has_native_bf16()
    warning = slow_precision_warning(torch.bfloat16, CPU)
    assert "training.precision=bf16" in warning and "training.precision=fp32" in warning
    # fp32, and bf16 on a GPU, are what the hardware does at full speed.
    assert slow_precision_warning(None, CPU) is None
    assert slow_precision_warning(torch.bfloat16, torch.device("cuda")) is None
