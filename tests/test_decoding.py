"""Greedy decoding rules and the evaluate command on real weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kidwhisper.audio import load_audio, log_mel
from kidwhisper.cli import main
from kidwhisper.data import read_manifest
from kidwhisper.decoding import DecodingOptions, greedy_decode


def test_random_model_respects_the_token_budget(random_tiny, real_manifest: Path):
    features = torch.from_numpy(log_mel(load_audio(read_manifest(real_manifest)[0].audio), 80))
    out = greedy_decode(random_tiny.model, features[None], random_tiny.special, DecodingOptions(5))
    assert len(out) == 1 and len(out[0]) <= 5
    # No special token is ever produced: only text tokens (ids below the end token).
    assert all(t < random_tiny.special.eot for t in out[0])


@pytest.mark.integration
def test_batched_decoding_equals_one_by_one(tiny_en, real_manifest: Path):
    clips = read_manifest(real_manifest)[:4]
    features = torch.from_numpy(np.stack([log_mel(load_audio(c.audio), 80) for c in clips]))
    batched = greedy_decode(tiny_en.model, features, tiny_en.special)
    single = [greedy_decode(tiny_en.model, f[None], tiny_en.special)[0] for f in features]
    assert batched == single
    assert all(tiny_en.special.eot not in seq for seq in batched)


@pytest.mark.integration
def test_evaluate_command(real_manifest: Path, tmp_path: Path, capsys):
    out = tmp_path / "preds.jsonl"
    args = ["evaluate", "bundled:tiny.en", "--data", str(real_manifest), "--limit", "4"]
    assert main([*args, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    assert {"utterance_id", "orthographic_text", "reference", "age_bucket"} <= set(rows[0])
    assert "WER" in capsys.readouterr().out
