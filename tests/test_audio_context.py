"""Short encoder input: features, the encoder, the config switch and what a model records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kidwhisper.config import ConfigError, load_config, parse_context
from kidwhisper.data.audio import (
    N_FRAMES,
    SAMPLE_RATE,
    STEP_FRAMES,
    clip_frames,
    load_audio,
    log_mel,
)
from kidwhisper.data.dataset import SpeechDataset, WhisperCollator, read_manifest
from kidwhisper.models.factory import load_model
from kidwhisper.models.short_input import ShortInputEncoder, recorded_context


def test_clip_frames_follow_the_context():
    three_seconds = 3 * SAMPLE_RATE
    assert clip_frames("full", three_seconds) == N_FRAMES
    assert clip_frames("batch", three_seconds) == 2 * STEP_FRAMES  # 302 frames -> 400
    assert clip_frames("batch", 40 * SAMPLE_RATE) == N_FRAMES  # never beyond 30 s
    assert clip_frames(10.0, three_seconds) == 1000
    assert clip_frames(2.55, three_seconds) == 256  # even, for the stride-2 convolution


def test_parse_context_rejects_nonsense():
    assert parse_context("batch") == "batch" and parse_context("12") == 12.0
    for bad in ("short", "0", "31", None):
        with pytest.raises(ValueError):
            parse_context(bad)


def test_short_features_are_the_head_of_the_30s_window(real_manifest: Path):
    """The collator's batch equals the 30 s features cut to the batch's width, padding
    included: a clip only ever sees what it would have seen in Whisper's window."""
    utterances = read_manifest(real_manifest)[:4]
    dataset = SpeechDataset(utterances, 80, context="batch")
    batch = WhisperCollator(None)([dataset[i] for i in range(4)])
    features = batch["input_features"]
    width = features.shape[-1]
    assert width % STEP_FRAMES == 0 and width < N_FRAMES
    for row, utt in enumerate(utterances):
        full = log_mel(load_audio(utt.audio), 80)
        np.testing.assert_allclose(features[row].numpy(), full[:, :width], atol=1e-5)


def test_short_encoder_matches_the_full_one_and_takes_short_input(random_tiny):
    encoder = random_tiny.model.get_encoder().eval()
    assert isinstance(encoder, ShortInputEncoder)  # every kidwhisper model can take it
    x = torch.randn(2, 80, N_FRAMES)
    with torch.no_grad():
        full = encoder(x).last_hidden_state
        reference = super(ShortInputEncoder, encoder).forward(x).last_hidden_state
        short = encoder(x[:, :, :400]).last_hidden_state
    assert torch.equal(full, reference)
    assert short.shape == (2, 200, random_tiny.variant.d_model)
    # Nothing stays patched after a short call.
    assert random_tiny.model.config.max_source_positions == 1500
    assert encoder.embed_positions.num_embeddings == 1500
    with pytest.raises(ValueError, match="multiple of 2"):
        encoder(x[:, :, :401])


def test_a_saved_model_keeps_its_audio_context(tmp_path: Path, random_tiny):
    random_tiny.save(tmp_path / "m")
    assert recorded_context(random_tiny.model.config) == "full"
    wm = load_model(str(tmp_path / "m"), "tiny", audio_context="batch")
    wm.save(tmp_path / "b")
    assert load_model(str(tmp_path / "b"), "tiny").audio_context == "batch"
    assert load_model(str(tmp_path / "m"), "tiny").audio_context == "full"


def test_config_checks_the_audio_context(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  audio_context: 10\n")
    assert load_config(path, check_paths=False).model.audio_context == "10"
    path.write_text("model:\n  audio_context: btach\n")
    with pytest.raises(ConfigError, match=r"model.audio_context: .*did you mean 'batch'"):
        load_config(path, check_paths=False)
