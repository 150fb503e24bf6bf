"""Augmentation on real audio: length and rate contracts, SNR, masks, determinism, config,
the dataset and a short training run with everything on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from torch.utils.data import DataLoader

from kidwhisper.config import AugmentConfig, ConfigError, SpecAugmentConfig, load_config
from kidwhisper.data.audio import HOP_LENGTH, SAMPLE_RATE, SILENCE_BELOW_MAX, load_audio, log_mel
from kidwhisper.data.augment import (
    Augmenter,
    build_augmenter,
    change_speed,
    mel_features,
    pitch_shift,
    spec_augment,
    vtlp_filters,
)
from kidwhisper.data.dataset import SpeechDataset, WhisperCollator, read_manifest
from kidwhisper.data.problems import DataProblems
from kidwhisper.data.sampling import ResumableBatchSampler, batch_stream

from .conftest import QUICKSTART, REPO

TONE = np.sin(2 * np.pi * 220 * np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)


@pytest.fixture(scope="module")
def utterances(real_manifest: Path):
    return read_manifest(real_manifest)[:4]


@pytest.fixture(scope="module")
def clips(utterances) -> list[np.ndarray]:
    return [load_audio(u.audio) for u in utterances]


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory, real_manifest: Path) -> Path:
    """Real babble (other clips of the manifest) and a short stereo 8 kHz hiss, which has
    to be resampled and looped."""
    folder = tmp_path_factory.mktemp("noise")
    for utt in read_manifest(real_manifest)[-2:]:
        sf.write(folder / f"{utt.utterance_id}.flac", load_audio(utt.audio), SAMPLE_RATE)
    hiss = np.random.default_rng(0).normal(0, 0.05, (4000, 2))
    (folder / "room").mkdir()  # the folder is searched recursively
    sf.write(folder / "room" / "hiss.wav", hiss, 8000)
    return folder


def only(name: str, noise_dir: Path | None = None, **settings) -> AugmentConfig:
    """A config with augmentation `name` alone at p = 1."""
    config = AugmentConfig()
    config.noise.folder = str(noise_dir) if noise_dir else None
    section = getattr(config, name)
    section.p = 1.0
    for key, value in settings.items():
        setattr(section, key, value)
    return config


def everything(noise_dir: Path) -> AugmentConfig:
    config = AugmentConfig()
    config.noise.folder = str(noise_dir)
    for section in (config.speed, config.pitch, config.vtlp, config.gain, config.noise):
        section.p = 1.0
    config.speed.factors = [0.9, 1.1]
    config.spec_augment.p = 1.0
    return config


def peak_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(audio))


# --- waveform ------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_keeps_16k_and_scales_length(clips, factor: float):
    for audio in clips:
        out = change_speed(audio, factor)
        assert out.dtype == np.float32
        assert abs(len(out) - len(audio) / factor) <= 0.005 * len(audio) / factor
    # Still 16 kHz samples: a 220 Hz tone now reads as 220 x factor Hz.
    assert abs(peak_hz(change_speed(TONE, factor)) - 220 * factor) < 1.0


def test_speed_through_the_augmenter_reports_its_factor(clips):
    augmenter = Augmenter(only("speed", factors=[0.9]), seed=0)
    out, applied = augmenter.waveform(clips[0], epoch=0, index=0)
    assert applied == {"speed": 0.9}
    assert abs(len(out) - len(clips[0]) / 0.9) <= 1


@pytest.mark.parametrize("name", ["gain", "noise", "pitch"])
def test_other_waveform_augmentations_keep_the_exact_length(clips, noise_dir, name):
    augmenter = Augmenter(only(name, noise_dir), seed=0)
    for index, audio in enumerate(clips):
        out, applied = augmenter.waveform(audio, epoch=0, index=index)
        assert applied and len(out) == len(audio) and out.dtype == np.float32
        assert not np.array_equal(out, audio)


def test_pitch_shift_moves_the_pitch_and_keeps_the_level():
    for semitones in (-2.0, 2.0):
        out = pitch_shift(TONE, semitones)
        assert len(out) == len(TONE)
        assert abs(peak_hz(out) / (220 * 2 ** (semitones / 12)) - 1) < 0.01
        middle = slice(SAMPLE_RATE // 2, -SAMPLE_RATE // 2)
        rms = np.sqrt(np.mean(out[middle] ** 2)) / np.sqrt(np.mean(TONE[middle] ** 2))
        assert 0.9 < rms < 1.1, rms  # phase locking: the partial's bins stay coherent


def test_mixed_noise_has_the_drawn_snr(clips, noise_dir):
    augmenter = Augmenter(only("noise", noise_dir, snr_db=[0.0, 20.0]), seed=3)
    drawn = []
    for epoch in range(3):  # several draws: babble and the looped hiss
        for index, audio in enumerate(clips):
            out, applied = augmenter.waveform(audio, epoch, index)
            noise = out.astype(np.float64) - audio
            measured = 10 * np.log10(np.mean(audio.astype(np.float64) ** 2) / np.mean(noise**2))
            assert abs(measured - applied["snr_db"]) < 0.5
            drawn.append(applied["snr_db"])
    assert min(drawn) >= 0 and max(drawn) <= 20 and len(set(drawn)) == len(drawn)


def test_gain_scales_by_the_drawn_decibels(clips):
    out, applied = Augmenter(only("gain", db=[-6.0, 6.0]), seed=0).waveform(clips[0], 0, 0)
    ratio = np.abs(out).max() / np.abs(clips[0]).max()
    assert np.isclose(20 * np.log10(ratio), applied["gain_db"], atol=1e-3)


def test_noise_folder_without_audio_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"augment\.noise\.folder: no .*wav"):
        Augmenter(only("noise", tmp_path), seed=0)


# --- features ------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_mels", "frames"), [(80, 3000), (80, 400), (128, 600)])
def test_own_log_mel_with_an_unwarped_filterbank_equals_log_mel(clips, n_mels, frames):
    for audio in clips[:2]:
        ours = mel_features(audio, vtlp_filters(n_mels, 1.0), frames)
        np.testing.assert_array_equal(ours, log_mel(audio, n_mels, frames))


def test_vtlp_keeps_the_shape_and_moves_energy_with_alpha(clips):
    frames = 400
    for audio in clips:
        warped = mel_features(audio, vtlp_filters(80, 1.1), frames)
        assert warped.shape == log_mel(audio, 80, frames).shape
    tone = np.sin(2 * np.pi * 2000 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)
    bands = [mel_features(tone, vtlp_filters(80, a), 200).mean(1).argmax() for a in (0.9, 1, 1.1)]
    assert bands[0] < bands[1] < bands[2]  # alpha > 1 moves content up, as a shorter tract


def test_vtlp_through_the_augmenter(clips):
    augmenter = Augmenter(only("vtlp"), seed=0)
    features, applied = augmenter.features(clips[0], 80, 600, epoch=0, index=0)
    assert 0.9 <= applied["vtlp_alpha"] <= 1.1 and features.shape == (80, 600)
    assert not np.array_equal(features, log_mel(clips[0], 80, 600))


def _runs(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a 1-d mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(edges[1::2] - edges[::2])


@pytest.mark.parametrize("seed", range(5))
def test_spec_augment_masks_the_configured_bands(clips, seed):
    audio = clips[seed % len(clips)]
    features = log_mel(audio, 80, 1000)
    clip_frames = len(audio) // HOP_LENGTH
    config = SpecAugmentConfig(freq_masks=2, freq_width=[10, 10], time_masks=3, time_width=[7, 7])
    out = spec_augment(features, np.random.default_rng(seed), config, clip_frames)
    assert out.shape == features.shape and out.dtype == features.dtype
    value = features.max() - SILENCE_BELOW_MAX  # the clip's own silence
    changed = out != features
    assert np.all(out[changed] == value)
    rows = np.all(out == value, axis=1) & ~np.all(features == value, axis=1)
    runs = _runs(rows)  # two bands of 10: apart, touching or overlapping
    assert 1 <= len(runs) <= 2 and all(r >= 10 for r in runs) and 10 <= sum(runs) <= 20
    columns = np.all(out == value, axis=0) & ~np.all(features == value, axis=0)
    assert not columns[clip_frames:].any()  # time masks stay within the clip
    runs = _runs(columns)
    assert 1 <= len(runs) <= 3 and all(r >= 7 for r in runs) and 7 <= sum(runs) <= 21


def test_spec_augment_of_zero_masks_changes_nothing(clips):
    features = log_mel(clips[0], 80, 600)
    config = SpecAugmentConfig(freq_masks=0, time_masks=2, time_width=[0, 0])
    assert np.array_equal(spec_augment(features, np.random.default_rng(0), config, 300), features)


# --- determinism and p -----------------------------------------------------------------------


def _augment(augmenter: Augmenter, audio: np.ndarray, epoch: int, index: int) -> np.ndarray:
    out, _ = augmenter.waveform(audio, epoch, index)
    features, _ = augmenter.features(out, 80, 1000, epoch, index)
    return features


def test_same_seed_epoch_and_index_give_the_same_clip(clips, noise_dir):
    first = Augmenter(everything(noise_dir), seed=7)
    again = Augmenter(everything(noise_dir), seed=7)  # e.g. in another worker, or resumed
    audio = clips[1]
    reference = _augment(first, audio, epoch=2, index=5)
    assert np.array_equal(reference, _augment(again, audio, epoch=2, index=5))
    assert np.array_equal(reference, _augment(first, audio, epoch=2, index=5))
    assert not np.array_equal(reference, _augment(first, audio, epoch=3, index=5))
    assert not np.array_equal(reference, _augment(first, audio, epoch=2, index=6))
    assert not np.array_equal(reference, _augment(Augmenter(everything(noise_dir), 8), audio, 2, 5))


def test_turning_one_augmentation_on_leaves_the_others_draws(clips, noise_dir):
    gain_only = Augmenter(only("gain"), seed=1).waveform(clips[0], 0, 0)[1]
    config = only("gain")
    config.noise.folder, config.noise.p = str(noise_dir), 1.0
    assert Augmenter(config, seed=1).waveform(clips[0], 0, 0)[1]["gain_db"] == gain_only["gain_db"]


def test_p_zero_leaves_the_clip_as_it_is(clips, noise_dir):
    config = everything(noise_dir)
    for name in ("speed", "pitch", "vtlp", "gain", "noise", "spec_augment"):
        getattr(config, name).p = 0.0
    assert build_augmenter(config, seed=0) is None
    augmenter = Augmenter(config, seed=0)
    for index, audio in enumerate(clips):
        out, applied = augmenter.waveform(audio, epoch=0, index=index)
        assert out is audio and applied == {}
        features, applied = augmenter.features(audio, 80, 600, epoch=0, index=index)
        assert np.array_equal(features, log_mel(audio, 80, 600)) and applied == {}


def test_probability_is_respected(clips):
    augmenter = Augmenter(only("gain", p=0.3), seed=0)
    hits = sum(bool(augmenter.waveform(clips[0], 0, index)[1]) for index in range(400))
    assert 80 < hits < 160


# --- config --------------------------------------------------------------------------------


def test_augment_section_loads_from_yaml(tmp_path: Path, noise_dir: Path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "augment:\n"
        "  speed: {p: 0.5}\n"
        f"  noise: {{p: 0.3, folder: {noise_dir}, snr_db: [0, 15]}}\n"
        "  spec_augment: {p: 1, time_width: [0, 20]}\n"
    )
    config = load_config(path).augment
    assert (config.speed.p, config.speed.factors) == (0.5, [0.9, 1.0, 1.1])
    assert config.noise.snr_db == [0.0, 15.0] and config.noise.folder == str(noise_dir)
    assert config.spec_augment.time_width == [0, 20] and config.spec_augment.freq_masks == 2
    assert config.gain.p == 0 and load_config().augment == AugmentConfig()  # all off


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("augment.sped.p=1", r"augment\.sped: unknown key \(did you mean 'speed'\?\)"),
        ("augment.gain.dbs=[1, 2]", r"augment\.gain\.dbs: unknown key \(did you mean 'db'\?\)"),
        ("augment.gain.p=1.5", r"augment\.gain\.p: must be <= 1"),
        ("augment.gain.db=[6, -6]", r"augment\.gain\.db: must be \[low, high\]"),
        ("augment.pitch.semitones=[-20, 0]", r"augment\.pitch\.semitones\[0\]: must be >= -12"),
        ("augment.noise.p=0.5", r"augment\.noise\.folder: must be set"),
        ("augment.noise.folder=nowhere", r"augment\.noise\.folder: folder not found: nowhere"),
    ],
)
def test_bad_augment_settings_name_the_key(override: str, expected: str):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


# --- dataset, epochs, workers, training ----------------------------------------------------


def test_dataset_augments_training_items_only(utterances, random_tiny, clips):
    augmenter = Augmenter(only("speed", factors=[0.9]), seed=0)
    train = SpeechDataset(
        utterances, 80, random_tiny.tokenizer, random_tiny.special, context="batch",
        augmenter=augmenter,
    )  # fmt: skip
    item = train[0]
    assert item["duration"] == pytest.approx(len(clips[0]) / 0.9 / SAMPLE_RATE, abs=1e-4)
    decode = SpeechDataset(utterances, 80, context="batch", augmenter=augmenter)
    assert decode[0]["duration"] == len(clips[0]) / SAMPLE_RATE


def test_workers_and_resume_see_the_same_augmentation(utterances, random_tiny, noise_dir):
    dataset = SpeechDataset(
        utterances, 80, random_tiny.tokenizer, random_tiny.special, context="batch",
        augmenter=Augmenter(everything(noise_dir), seed=0),
    )  # fmt: skip
    sampler = ResumableBatchSampler(len(dataset), 2, seed=0)
    collate = WhisperCollator(random_tiny.special)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=2, collate_fn=collate)
    position = [3, 1]  # as restored from a checkpoint: epoch 3, one batch used
    batch = next(batch_stream(loader, sampler, position, DataProblems()))
    assert dataset.epoch == 3
    indices = sampler.order(3)[2:4]
    assert batch["indices"] == indices
    dataset.set_epoch(3)
    expected = collate([dataset[i] for i in indices])["input_features"]
    assert np.array_equal(batch["input_features"].numpy(), expected.numpy())
    dataset.set_epoch(4)
    assert not np.array_equal(collate([dataset[i] for i in indices])["input_features"], expected)


@pytest.mark.integration
@pytest.mark.slow
def test_short_training_run_with_every_augmentation(tmp_path: Path, noise_dir: Path):
    from kidwhisper.training.experiments import run_experiment

    overrides = [
        "model.variant=tiny", "model.pretrained=random",
        f"data.train=[{QUICKSTART / 'train.jsonl'}]", "data.eval=null", "data.num_workers=1",
        "training.batch_size=4", "training.gradient_accumulation_steps=1",
        "training.max_steps=3", "training.warmup_steps=0", "training.lr=1e-4",
        "training.gradient_checkpointing=false", "evaluation.before_training=false",
        f"output.checkpoints_dir={tmp_path / 'ckpt'}",
        f"output.experiments_dir={tmp_path / 'exp'}", "output.name=run",
        "augment.speed.p=1", "augment.pitch.p=0.5", "augment.vtlp.p=0.5", "augment.gain.p=1",
        "augment.noise.p=1", f"augment.noise.folder={noise_dir}", "augment.spec_augment.p=1",
    ]  # fmt: skip
    metrics = run_experiment(load_config(REPO / "configs/quickstart.yaml", overrides))
    assert metrics["finished"] and metrics["steps"] == 3
    assert all(np.isfinite(point["loss"]) for point in metrics["loss_curve"])
    saved = json.loads((tmp_path / "exp" / "run" / "metrics.json").read_text())
    assert saved["samples"] == 12
    results = (tmp_path / "exp" / "run" / "results.md").read_text()
    assert "- Augmentation: speed (p 1.0" in results and "noise (p 1.0" in results
