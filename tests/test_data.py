"""Audio loading, manifests and the collator (labels, padding, no doubled start token)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from kidwhisper.data.audio import N_FRAMES, AudioError, load_audio, log_mel
from kidwhisper.data.dataset import (
    IGNORE_INDEX,
    ManifestError,
    SpeechDataset,
    WhisperCollator,
    read_manifest,
)


def test_any_rate_and_channels_become_16k_mono(tmp_path: Path, real_manifest: Path):
    clip = read_manifest(real_manifest)[0]
    audio = load_audio(clip.audio)
    stereo = np.stack([audio, audio], axis=1)
    for rate in (8000, 22050, 44100, 48000):
        import soxr

        resampled = soxr.resample(stereo, 16000, rate)
        path = tmp_path / f"clip_{rate}.wav"
        sf.write(path, resampled, rate)
        back = load_audio(path)
        assert back.ndim == 1 and back.dtype == np.float32
        assert abs(len(back) - len(audio)) <= 2
        if rate >= 16000:  # nothing above 8 kHz was lost, so the signal is recovered
            n = min(len(back), len(audio))
            corr = np.corrcoef(back[:n], audio[:n])[0, 1]
            assert corr > 0.99, rate


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_shape(real_manifest: Path, n_mels: int):
    features = log_mel(load_audio(read_manifest(real_manifest)[0].audio), n_mels)
    assert features.shape == (n_mels, N_FRAMES)
    assert np.isfinite(features).all()


def test_unreadable_audio_is_named(tmp_path: Path):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match=r"bad\.flac: not readable as audio"):
        load_audio(bad)
    with pytest.raises(AudioError, match=r"missing\.flac: audio file not found"):
        load_audio(tmp_path / "missing.flac")


def test_manifest_errors_name_file_and_line(tmp_path: Path):
    good = {"utterance_id": "a", "audio_path": "a.flac", "orthographic_text": "hi"}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not valid JSON"):
        read_manifest(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(
        ManifestError, match=r"m.jsonl:2: duplicate utterance_id a \(first at line 1\)"
    ):
        read_manifest(path)
    path.write_text(json.dumps({"utterance_id": "a", "audio_path": "a.flac"}) + "\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:1: missing .*orthographic_text"):
        read_manifest(path)
    assert read_manifest(path, require_text=False)[0].audio == tmp_path / "a.flac"


@pytest.mark.parametrize("model", ["tiny_en", "random_tiny"])
def test_collator_builds_teacher_forcing_batches(model: str, real_manifest: Path, request):
    wm = request.getfixturevalue(model)
    utterances = read_manifest(real_manifest)[:3]
    dataset = SpeechDataset(utterances, wm.n_mels, wm.tokenizer, wm.special)
    batch = WhisperCollator(wm.special)([dataset[i] for i in range(3)])

    assert batch["input_features"].shape == (3, wm.n_mels, N_FRAMES)
    inputs, labels = batch["decoder_input_ids"], batch["labels"]
    assert inputs.shape == labels.shape
    prefix = wm.special.prefix
    for row, utt in enumerate(utterances):
        n = int((labels[row] != IGNORE_INDEX).sum())
        # The start token is the first decoder input, once; labels never contain it.
        assert inputs[row, 0] == wm.special.sot
        assert (inputs[row, :n] == wm.special.sot).sum() == 1
        assert wm.special.sot not in labels[row].tolist()
        # Labels are the inputs shifted left by one: prefix tail, text, end of text.
        assert labels[row, : len(prefix) - 1].tolist() == prefix[1:]
        assert torch.equal(labels[row, : n - 1], inputs[row, 1:n])
        assert labels[row, n - 1] == wm.special.eot
        assert (labels[row, n:] == IGNORE_INDEX).all()
        text = wm.tokenizer.decode(labels[row, :n].tolist(), skip_special_tokens=True)
        assert text.strip() == utt.text


def test_collator_counts_unreadable_clips(tmp_path: Path, random_tiny, real_manifest: Path):
    good = read_manifest(real_manifest)[0]
    bad = type(good)("broken", tmp_path / "broken.flac", "hello")
    (tmp_path / "broken.flac").write_bytes(b"\x00" * 10)
    dataset = SpeechDataset([good, bad], 80, random_tiny.tokenizer, random_tiny.special)
    batch = WhisperCollator(random_tiny.special)([dataset[0], dataset[1]])
    assert batch["utterance_ids"] == [good.utterance_id]
    assert [uid for uid, _ in batch["errors"]] == ["broken"]
    assert "broken.flac" in batch["errors"][0][1]
    assert batch["input_features"].shape[0] == 1
