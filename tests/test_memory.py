"""The memory arithmetic: parameter counts from the real architectures, and its parts."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from kidwhisper.models.memory import GIB, estimate, parameter_count
from kidwhisper.models.variants import VARIANTS, get_variant

from .conftest import REPO


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_parameter_count_is_that_of_the_real_architecture(name: str):
    # Built on the meta device: the real modules, no memory, so even large-v3 is instant.
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(VARIANTS[name].hf_config())
    real = sum(p.numel() for p in model.parameters())  # tied output layer counted once
    assert parameter_count(VARIANTS[name]) == real


def test_published_sizes():
    # openai/whisper's model card: 39M, 74M, 244M, 769M, 1550M (rounded, with the 1500
    # sinusoidal encoder positions, which are a buffer there and a parameter here).
    millions = {n: parameter_count(get_variant(n)) / 1e6 for n in ("tiny", "base", "small")}
    assert millions == pytest.approx({"tiny": 37.8, "base": 72.6, "small": 241.7}, abs=0.1)
    assert parameter_count(get_variant("medium")) / 1e6 == pytest.approx(763.9, abs=0.1)
    assert parameter_count(get_variant("large-v3")) / 1e6 == pytest.approx(1543.5, abs=0.1)


def test_checkpointing_mixed_precision_and_batch_move_the_right_parts():
    small = get_variant("small")
    plain = estimate(small, 12, 64, checkpointing=False)
    ckpt = estimate(small, 12, 64, checkpointing=True)
    assert ckpt.activations < plain.activations / 3
    assert (ckpt.weights, ckpt.gradients, ckpt.optimizer) == (
        plain.weights,
        plain.gradients,
        plain.optimizer,
    )
    # AdamW: fp32 weights 4 B, gradients 4 B, two moments 8 B per trainable parameter.
    assert plain.optimizer == 2 * plain.gradients == 2 * plain.weights
    fp32 = estimate(small, 12, 64, checkpointing=False, mixed_precision=False)
    assert fp32.activations == 2 * plain.activations
    double = estimate(small, 24, 64, checkpointing=False)
    assert double.activations == 2 * plain.activations
    assert double.weights == plain.weights
    frozen = estimate(small, 12, 64, trainable=1_000_000)
    assert frozen.gradients == 4_000_000 and frozen.optimizer == 8_000_000
    assert estimate(small, 12, device="cpu").runtime > 0 == estimate(small, 12).runtime
    assert plain.total == sum(getattr(plain, p) for p, _ in plain.rows()[:-1])
    assert plain.rows()[-1] == ("total", plain.total / GIB)


def test_estimate_command_prints_both_columns():
    cmd = [sys.executable, "-m", "kidwhisper", "estimate"]
    cmd += [str(REPO / "configs/baseline_whisper_medium.yaml"), "--tokens", "48"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert out.startswith("medium: 763.9M parameters, micro-batch 8, 48 label tokens")
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    no_ckpt, ckpt = float(total[1]), float(total[2])
    expected = estimate(get_variant("medium"), 8, 48, checkpointing=True).total / GIB
    assert ckpt == pytest.approx(expected, abs=0.01) and no_ckpt > ckpt
