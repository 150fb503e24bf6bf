"""Audio in, log-mel features out.

Any sample rate and channel count is read (soundfile/libsndfile: FLAC, WAV, OGG, MP3...),
mixed down to mono and resampled to Whisper's 16 kHz with soxr. Features are the
transformers `WhisperFeatureExtractor`'s log-mel spectrogram, with the variant's 80 or 128
mel bins, padded to Whisper's 30-second window or to a shorter one (`clip_frames`, for the
audio context `model.audio_context`).
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from transformers import WhisperFeatureExtractor

from kidwhisper.config import BATCH_STEP_SECONDS, FULL, context_step_seconds, is_batch_context
from kidwhisper.errors import UserError

SAMPLE_RATE = 16_000
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_FRAMES = CHUNK_SECONDS * SAMPLE_RATE // HOP_LENGTH  # 3000 mel frames in a 30 s window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
STEP_FRAMES = round(BATCH_STEP_SECONDS * FRAMES_PER_SECOND)  # `batch`: multiples of 2 s
SILENCE_BELOW_MAX = 2.0  # zero padding's log-mel value, below the clip's maximum


# Why a clip cannot be used: the categories bad-data reports count (problems.py).
MISSING, EMPTY_FILE, NOT_AUDIO, TRUNCATED = "missing audio", "empty file", "not audio", "truncated"
NO_SAMPLES, NOT_FINITE = "no samples", "NaN or inf samples"


class AudioError(UserError, ValueError):
    """A clip that cannot be used, with the file named in the message; `reason` is one of
    the categories above."""

    def __init__(self, message: str, reason: str = NOT_AUDIO) -> None:
        super().__init__(message)
        self.reason = reason


def load_audio(
    path: str | Path, sample_rate: int = SAMPLE_RATE, start: float = 0.0, end: float | None = None
) -> np.ndarray:
    """Read `path` (or only its seconds [start, end)) as float32 mono at `sample_rate`, or
    raise `AudioError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found", MISSING)
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: is an empty file (0 bytes)", EMPTY_FILE)
    try:
        f = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: not readable as audio ({err})", NOT_AUDIO) from err
    try:
        with f:
            rate = f.samplerate
            f.seek(min(round(start * rate), f.frames))
            frames = -1 if end is None else max(0, round(end * rate) - round(start * rate))
            audio = f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        # The header was fine, the data is not: a cut-off download or copy.
        raise AudioError(f"{path}: truncated or corrupt audio data ({err})", TRUNCATED) from err
    audio = audio.mean(axis=1)  # channels -> mono
    if rate != sample_rate:
        audio = soxr.resample(audio, rate, sample_rate, quality="HQ")
    if audio.size == 0:
        where = "" if start == 0 and end is None else f" in [{start}, {end}) s"
        raise AudioError(f"{path}: is empty (no samples{where})", NO_SAMPLES)
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: contains NaN or infinite samples", NOT_FINITE)
    return np.ascontiguousarray(audio, dtype=np.float32)


@cache
def feature_extractor(n_mels: int) -> WhisperFeatureExtractor:
    """Whisper's feature extractor for `n_mels` bins (80, or 128 for large-v3)."""
    return WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLE_RATE)


def log_mel(audio: np.ndarray, n_mels: int, frames: int = N_FRAMES) -> np.ndarray:
    """Log-mel spectrogram (n_mels, frames) of 16 kHz audio, zero-padded or cut to
    `frames` x 10 ms (Whisper's window is 3000 frames, 30 s).

    Whisper's scaling clamps each clip at its own maximum minus 8 (log10 units) before
    mapping x -> (x + 4) / 4, so the padding of any clip with audible sound reads exactly
    `features.max() - 2`, whatever the window: `SILENCE_BELOW_MAX`.
    """
    features = feature_extractor(n_mels)(
        audio,
        sampling_rate=SAMPLE_RATE,
        return_tensors="np",
        padding="max_length",
        max_length=frames * HOP_LENGTH,
    ).input_features
    return features[0]


def clip_frames(context: str | float, num_samples: int) -> int:
    """Mel frames to compute for a clip of `num_samples` 16 kHz samples under `context`.

    Under ``batch`` the clip gets its own length plus two frames (so its last frame sees
    the same zero padding as in a 30 s window), rounded up to `STEP_FRAMES` (``batch:S``: to
    S seconds); a batch then takes its widest clip's frames (see
    `data.dataset.WhisperCollator`).
    """
    if context == FULL:
        return N_FRAMES
    if is_batch_context(context):
        step = round(context_step_seconds(context) * FRAMES_PER_SECOND)
        needed = num_samples // HOP_LENGTH + 2
        return min(N_FRAMES, math.ceil(needed / step) * step)
    frames = math.ceil(float(context) * FRAMES_PER_SECOND / 2) * 2  # the encoder wants even
    return min(N_FRAMES, frames)
