"""Augmentation per training source (`data.source_augment`) and tempo (`augment.tempo`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from kidwhisper.config import AugmentConfig, ConfigError, dump_config, load_config
from kidwhisper.data.audio import SAMPLE_RATE, load_audio, log_mel
from kidwhisper.data.augment import Augmenter, build_augmenter, describe, time_stretch
from kidwhisper.data.dataset import SpeechDataset, read_manifest

from .conftest import QUICKSTART

TONE = np.sin(2 * np.pi * 220 * np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)
KIDS, OLDER = "data/kids/train.jsonl", "data/older-split/train.jsonl"


def _peak_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(audio))


def _load(*overrides: str):
    return load_config(None, [f"data.train=[{KIDS},{OLDER}]", *overrides], check_paths=False)


@pytest.mark.parametrize("key", [OLDER, "older-split"])
def test_a_block_is_named_by_path_or_folder(key: str):
    config = _load(f"data.source_augment={{{key}: {{pitch: {{p: 1, semitones: [1, 3]}}}}}}")
    block = config.data.source_augment[key]
    assert block.pitch.p == 1 and block.pitch.semitones == [1.0, 3.0]
    assert block.vtlp.p == 0 and config.augment.pitch.p == 0  # nothing else turned on
    again = load_config_text(dump_config(config))
    assert again.data.source_augment == config.data.source_augment


def load_config_text(text: str):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    return load_config(f.name, check_paths=False)


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("{older-splt: {pitch: {p: 1}}}", "names no data.train.*did you mean 'older-split'"),
        ("{train: {pitch: {p: 1}}}", "names 2"),  # both files are train.jsonl
        ("{older-split: {pich: {p: 1}}}", r"source_augment.older-split.pich: unknown key.*'pitch'"),
        ("{older-split: {tempo: {rate: [1.2, 0.8]}}}", "low <= high"),
        ("{older-split: {noise: {p: 1}}}", "source_augment.older-split.noise.folder: must be set"),
        ("{older-split: 3}", "must be a mapping"),
    ],
)  # fmt: skip
def test_bad_blocks_name_the_key(block: str, expected: str):
    with pytest.raises(ConfigError, match=expected):
        _load(f"data.source_augment={block}")


def test_tempo_changes_the_length_and_keeps_the_pitch():
    out = time_stretch(TONE, 1.25)
    assert abs(len(out) - len(TONE) / 1.25) <= 1
    assert abs(_peak_hz(out) - 220) < 2.0
    config = AugmentConfig()
    config.tempo = replace(config.tempo, p=1.0, rate=[0.8, 0.8])
    audio, applied = Augmenter(config, seed=0).waveform(TONE, epoch=0, index=0)
    assert applied == {"tempo": 0.8} and abs(len(audio) - len(TONE) / 0.8) <= 1


def test_turning_tempo_on_leaves_the_other_draws():
    pitch = AugmentConfig()
    pitch.pitch.p = 1.0
    both = AugmentConfig()
    both.pitch.p, both.tempo.p = 1.0, 1.0
    _, alone = Augmenter(pitch, seed=5).waveform(TONE, 1, 7)
    _, together = Augmenter(both, seed=5).waveform(TONE, 1, 7)
    assert together["semitones"] == alone["semitones"] and "tempo" in together


def test_only_the_named_source_is_augmented(random_tiny):
    config = load_config(
        None,
        [
            f"data.train=[{QUICKSTART / 'train.jsonl'},{QUICKSTART / 'dev.jsonl'}]",
            "data.source_augment={dev: {pitch: {p: 1, semitones: [3, 4]}}}",
        ],
    )
    augmenter = build_augmenter(config.augment, 0, config.data)
    assert augmenter is not None
    assert augmenter.for_source(0) is None and augmenter.for_source(1) is not None
    clips = read_manifest(QUICKSTART / "train.jsonl")[:2]
    utterances = [clips[0], replace(clips[1], source=1)]
    dataset = SpeechDataset(
        utterances, 80, random_tiny.tokenizer, random_tiny.special, context="full",
        augmenter=augmenter,
    )  # fmt: skip
    plain = [log_mel(load_audio(u.audio), 80) for u in utterances]
    np.testing.assert_array_equal(dataset[0]["input_features"], plain[0])
    assert not np.allclose(dataset[1]["input_features"], plain[1], atol=1e-3)
    assert "per source: dev: pitch" in describe(config.augment, config.data)


def test_a_source_block_replaces_the_global_augmentation():
    config = _load("augment={speed: {p: 1}}", "data.source_augment={older-split: {vtlp: {p: 0.5}}}")
    augmenter = build_augmenter(config.augment, 0, config.data)
    kids, older = augmenter.for_source(0), augmenter.for_source(1)
    assert kids is augmenter and kids.config.speed.p == 1
    assert older.config.speed.p == 0 and older.config.vtlp.p == 0.5
    off = _load("data.source_augment={older-split: {}}")
    assert build_augmenter(off.augment, 0, off.data) is None  # nothing on anywhere


def test_shipped_mix_config_makes_older_voices_child_like(tmp_path: Path):
    from .conftest import REPO

    path = REPO / "configs" / "kids_adult_mix.yaml"
    config = load_config(path, check_paths=False)
    (block,) = config.data.source_augment.values()
    assert block.pitch.p > 0 and min(block.pitch.semitones) > 0  # up only
    assert block.vtlp.p > 0 and min(block.vtlp.alpha) > 1  # formants up: shorter tracts
    assert len(config.data.train) == len(config.data.train_weights) == 2
