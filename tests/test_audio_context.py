"""Short encoder input: features, the encoder, the config switch and what a model records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kidwhisper.config import ConfigError, load_config, parse_context
from kidwhisper.data.audio import (
    HOP_LENGTH,
    N_FRAMES,
    SAMPLE_RATE,
    STEP_FRAMES,
    clip_frames,
    load_audio,
    log_mel,
)
from kidwhisper.data.dataset import SpeechDataset, WhisperCollator, pad_frames, read_manifest
from kidwhisper.models.factory import load_model
from kidwhisper.models.short_input import ShortInputEncoder, recorded_context
from kidwhisper.training.run import Run
from kidwhisper.training.schedule import full_context_step

from .conftest import QUICKSTART, train_steps


def test_clip_frames_follow_the_context():
    three_seconds = 3 * SAMPLE_RATE
    assert clip_frames("full", three_seconds) == N_FRAMES
    assert clip_frames("batch", three_seconds) == 2 * STEP_FRAMES  # 302 frames -> 400
    assert clip_frames("batch", 40 * SAMPLE_RATE) == N_FRAMES  # never beyond 30 s
    assert clip_frames(10.0, three_seconds) == 1000
    assert clip_frames(2.55, three_seconds) == 256  # even, for the stride-2 convolution
    # batch:S rounds the clip's 302 frames up to S seconds instead of 2.
    assert clip_frames("batch:1", three_seconds) == 400
    assert clip_frames("batch:0.5", three_seconds) == 350
    assert clip_frames("batch:0.02", three_seconds) == 302
    assert clip_frames("batch:0.5", 40 * SAMPLE_RATE) == N_FRAMES


def test_parse_context_rejects_nonsense():
    assert parse_context("batch") == "batch" and parse_context("12") == 12.0
    assert parse_context("batch:0.5") == "batch:0.5" and parse_context("batch:1.0") == "batch:1"
    assert parse_context("batch:2") == "batch"  # batch's own step: one name for one input
    for bad in ("short", "0", "31", None, "batch:", "batch:0", "batch:31", "batch:x"):
        with pytest.raises(ValueError):
            parse_context(bad)
    with pytest.raises(ValueError, match=r"multiple of 0\.02"):
        parse_context("batch:0.25")  # 25 frames: the stride-2 convolution wants even


@pytest.mark.parametrize(("context", "step"), [("batch", STEP_FRAMES), ("batch:0.5", 50)])
def test_short_features_are_the_head_of_the_30s_window(real_manifest: Path, context, step):
    """The collator's batch equals the 30 s features cut to the batch's width, padding
    included: a clip only ever sees what it would have seen in Whisper's window."""
    utterances = read_manifest(real_manifest)[:4]
    dataset = SpeechDataset(utterances, 80, context=context)
    batch = WhisperCollator(None)([dataset[i] for i in range(4)])
    features = batch["input_features"]
    width = features.shape[-1]
    widest = max(len(load_audio(u.audio)) for u in utterances) // HOP_LENGTH + 2
    assert width % step == 0 and widest <= width < widest + step and width < N_FRAMES
    for row, utt in enumerate(utterances):
        full = log_mel(load_audio(utt.audio), 80)
        np.testing.assert_allclose(features[row].numpy(), full[:, :width], atol=1e-5)


def test_a_short_batch_padded_to_30s_is_the_30s_window(real_manifest: Path):
    """`pad_frames` (training.full_context_prob's widening) gives what computing the clips
    in Whisper's 30 s window gives."""
    utterances = read_manifest(real_manifest)[:4]
    dataset = SpeechDataset(utterances, 80, context="batch")
    short = WhisperCollator(None)([dataset[i] for i in range(4)])["input_features"]
    wide = pad_frames(short, N_FRAMES)
    assert wide.shape == (4, 80, N_FRAMES) and torch.equal(wide[..., : short.shape[-1]], short)
    for row, utt in enumerate(utterances):
        full = log_mel(load_audio(utt.audio), 80)
        np.testing.assert_allclose(wide[row].numpy(), full, atol=1e-5)
    assert pad_frames(wide, N_FRAMES) is wide  # already as wide: unchanged


def test_full_context_steps_are_drawn_from_the_seed_and_step():
    def drawn(prob, seed, steps=400):
        return [full_context_step(prob, seed, step) for step in range(steps)]

    assert not any(drawn(0.0, 0)) and all(drawn(1.0, 0))
    quarter = drawn(0.25, 0)
    assert quarter == drawn(0.25, 0)  # a resumed run draws the same steps
    # 400 draws at p = 0.25: standard deviation of the share 0.022, so +-0.07 is 3 sigma.
    assert 0.18 < sum(quarter) / 400 < 0.32
    assert quarter != drawn(0.25, 1)


def _encoder_widths(tmp_path: Path, prob: float, steps: int = 3) -> list[int]:
    """Mel frames the encoder is given in each of `steps` training steps of a tiny run."""
    config = load_config(
        None,
        [
            "model.variant=tiny", "model.pretrained=random", "model.audio_context=batch",
            f"data.train=[{QUICKSTART / 'train.jsonl'}]", "data.eval=null", "data.num_workers=0",
            "training.batch_size=2", "training.gradient_accumulation_steps=1",
            "training.max_steps=3", "training.warmup_steps=0",
            "training.gradient_checkpointing=false", "evaluation.before_training=false",
            f"training.full_context_prob={prob}", f"output.checkpoints_dir={tmp_path / 'c'}",
            f"output.experiments_dir={tmp_path / 'e'}", "output.name=run",
        ],
    )  # fmt: skip
    run = Run(config)
    widths: list[int] = []
    encoder = run.model.get_encoder()
    encoder.register_forward_pre_hook(lambda _, args: widths.append(args[0].shape[-1]))
    train_steps(run, steps)
    return widths


def test_full_context_prob_trains_those_steps_on_30s(tmp_path: Path):
    assert all(w < N_FRAMES for w in _encoder_widths(tmp_path / "short", 0.0))
    assert _encoder_widths(tmp_path / "full", 1.0) == [N_FRAMES] * 3


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
    load_model(str(tmp_path / "m"), "tiny", audio_context="batch:0.5").save(tmp_path / "h")
    assert load_model(str(tmp_path / "h"), "tiny").audio_context == "batch:0.5"


def test_config_checks_the_audio_context(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  audio_context: 10\n")
    assert load_config(path, check_paths=False).model.audio_context == "10"
    path.write_text("model:\n  audio_context: batch:0.5\n")
    assert load_config(path, check_paths=False).model.audio_context == "batch:0.5"
    path.write_text("model:\n  audio_context: btach\n")
    with pytest.raises(ConfigError, match=r"model.audio_context: .*did you mean 'batch'"):
        load_config(path, check_paths=False)
    path.write_text("model:\n  audio_context: full\ntraining:\n  full_context_prob: 0.25\n")
    with pytest.raises(ConfigError, match=r"training.full_context_prob: set, but .* 'full'"):
        load_config(path, check_paths=False)
