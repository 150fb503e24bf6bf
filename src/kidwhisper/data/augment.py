"""On-the-fly training augmentation: waveform (speed, tempo, pitch, noise, gain) then log-mel
(VTLP, SpecAugment), each applied to a clip with its own probability and drawn from its own
range (`config.AugmentConfig`). `data.source_augment` gives one training manifest's clips a
block of their own instead (`Augmenter.for_source`).

Every draw comes from a numpy Generator seeded by (training.seed, epoch, dataset index,
augmentation), so a clip is augmented the same way in any DataLoader worker, on any process
and after a resume, differently in each epoch, and turning one augmentation on or off leaves
the draws of the others as they were.

Libraries: soxr (already the resampler) does speed; the rest is vectorised numpy/torch here.
librosa's pitch shift is the same phase vocoder + resample but would bring numba and scipy
for one function, and torchaudio has no CPU build here. Costs per batch:
`benchmarks/augment_cost.py`.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from kidwhisper.config import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    SpecAugmentConfig,
    resolve_path,
    source_index,
)
from kidwhisper.data.audio import (
    HOP_LENGTH,
    N_FRAMES,
    SAMPLE_RATE,
    SILENCE_BELOW_MAX,
    feature_extractor,
    load_audio,
    log_mel,
)

NOISE_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
PV_FFT, PV_HOP = 512, 128  # the phase vocoder's STFT (32 ms windows, 75% overlap)
# Each augmentation's random stream (its index seeds it: new ones go last, so adding one
# leaves the others' draws as they were). Applied as `waveform` and `features` read.
STREAMS = ("speed", "pitch", "noise", "gain", "vtlp", "spec_augment", "tempo")


# --- waveform ------------------------------------------------------------------------------


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """`audio` played `factor` times faster: len / factor samples, pitch x factor, still at
    16 kHz (sox's `speed`, as in Kaldi's 0.9/1.0/1.1 perturbation)."""
    if factor == 1.0:
        return audio
    # Read as if recorded at factor x 16 kHz, then resampled to 16 kHz.
    return soxr.resample(audio, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32)


def time_stretch(audio: np.ndarray, rate: float) -> np.ndarray:
    """`audio` `rate` times faster at the same pitch: a phase vocoder, vectorised over frames.

    Each output frame interpolates the magnitudes of two input frames and advances each
    bin's phase by the instantaneous frequency measured between them. Alone, that lets the
    bins of one partial drift apart in phase wherever a frame pair is reused (any onset,
    then for good), which cancels sound: so phases are locked to the nearest spectral peak
    (Laroche & Dolson's identity phase locking), keeping each partial's bins coherent.
    """
    window = torch.hann_window(PV_FFT)
    spec = torch.stft(torch.from_numpy(audio), PV_FFT, PV_HOP, window=window, return_complex=True)
    steps = torch.arange(0, spec.shape[-1], rate, dtype=torch.float64)
    frac, index = (steps % 1).float(), steps.long()
    spec = torch.nn.functional.pad(spec, (0, 2))  # index + 1 past the end reads silence
    magnitudes, phases = spec.abs(), spec.angle()  # once per input frame, then indexed
    left, right = phases[:, index], phases[:, index + 1]
    advance = torch.linspace(0, math.pi * PV_HOP, spec.shape[0])[:, None]  # per bin, per hop
    delta = right - left - advance
    delta = delta - 2 * math.pi * torch.round(delta / (2 * math.pi)) + advance
    # Wrapping each increment keeps the running sum small, so float32 keeps its precision
    # over thousands of frames (only the phase modulo 2 pi matters).
    delta = torch.remainder(delta, 2 * math.pi)
    phase = torch.cat([phases[:, :1], delta[:, :-1]], dim=1).cumsum(dim=1)
    magnitude = frac * magnitudes[:, index + 1] + (1 - frac) * magnitudes[:, index]
    peak = _nearest_peak(magnitude)
    phase = phase.gather(0, peak) + left - left.gather(0, peak)
    length = round(len(audio) / rate)
    out = torch.istft(torch.polar(magnitude, phase), PV_FFT, PV_HOP, window=window, length=length)
    return out.numpy()


def _nearest_peak(magnitude: torch.Tensor) -> torch.Tensor:
    """For each (bin, frame), the bin of the nearest local magnitude maximum in its frame
    (itself in a frame without one)."""
    bins = torch.arange(magnitude.shape[0])[:, None].expand_as(magnitude)
    zero = torch.zeros_like(magnitude[:1])
    above, below = torch.cat([magnitude[1:], zero]), torch.cat([zero, magnitude[:-1]])
    is_peak = (magnitude >= above) & (magnitude > below)
    none = magnitude.shape[0]  # "no peak" marker, past the last bin
    lower = torch.where(is_peak, bins, -none).cummax(dim=0).values
    upper = torch.where(is_peak, bins, 2 * none).flip(0).cummin(dim=0).values.flip(0)
    nearest = torch.where(bins - lower <= upper - bins, lower, upper)
    return torch.where((nearest < 0) | (nearest >= none), bins, nearest)


def pitch_shift(audio: np.ndarray, semitones: float) -> np.ndarray:
    """Pitch moved by `semitones`, same length. Resampling alone moves pitch and tempo
    together (that is speed perturbation), so the clip is first stretched in time by the
    pitch ratio, then resampled by it, which restores the length (librosa's method)."""
    if semitones == 0:
        return audio
    ratio = 2 ** (semitones / 12)
    stretched = time_stretch(audio, 1 / ratio)  # ratio x longer, same pitch
    shifted = soxr.resample(stretched, SAMPLE_RATE * ratio, SAMPLE_RATE)
    return _fit(shifted.astype(np.float32), len(audio))


def apply_gain(audio: np.ndarray, db: float) -> np.ndarray:
    """Scaled by `db` decibels. No clipping: the float pipeline has no ceiling, and clipping
    would add a distortion nobody asked for."""
    return audio * np.float32(10 ** (db / 20))


def mix_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`audio` + `noise` (same length) scaled so that signal power / noise power, both over
    the whole clip, is `snr_db`."""
    signal_power = float(np.mean(np.square(audio, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    if signal_power == 0 or noise_power == 0:
        return audio
    scale = math.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
    return (audio + np.float32(scale) * noise).astype(np.float32)


def _fit(audio: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad to `length` samples (resampling rounds to a sample or two)."""
    return audio[:length] if len(audio) >= length else np.pad(audio, (0, length - len(audio)))


class NoiseBank:
    """The noise clips of a folder (any rate, any channels), read a stretch at a time."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in NOISE_SUFFIXES)
        if not self.files:
            raise ConfigError(f"augment.noise.folder: no {'/'.join(NOISE_SUFFIXES)} in {folder}")
        self.seconds = []
        for path in self.files:  # headers only: the audio is read when a clip needs it
            try:
                self.seconds.append(sf.info(path).duration)
            except (sf.LibsndfileError, RuntimeError) as err:
                message = f"augment.noise.folder: {path} is not readable audio ({err})"
                raise ConfigError(message) from err

    def sample(self, rng: np.random.Generator, num_samples: int) -> np.ndarray:
        """`num_samples` of a random clip from a random start; a shorter clip is looped
        from a random offset."""
        i = int(rng.integers(len(self.files)))
        need = num_samples / SAMPLE_RATE
        if self.seconds[i] > need:
            start = rng.uniform(0, self.seconds[i] - need)
            noise = load_audio(self.files[i], start=start, end=start + need)
        else:
            noise = load_audio(self.files[i])
            noise = np.roll(noise, -int(rng.integers(len(noise))))
        return np.resize(noise, num_samples)  # loops, or trims a rounding sample


# --- log-mel -------------------------------------------------------------------------------


@cache
def _mel_filters(n_mels: int) -> np.ndarray:
    return feature_extractor(n_mels).mel_filters  # (201 frequency bins, n_mels), Slaney


def vtlp_filters(n_mels: int, alpha: float, boundary_hz: float = 4800.0) -> np.ndarray:
    """Whisper's mel filterbank applied to a warped power spectrum (Jaitly & Hinton 2013).

    The warp moves the content at frequency f to f' = alpha f up to a boundary, then
    linearly so that the Nyquist frequency stays put. The warped spectrum samples the
    original at f = warp^-1(f'), interpolating linearly between bins: a (bins x bins)
    matrix R. mel = filters^T R power = (R^T filters)^T power, so the warp is folded into
    the filterbank once per clip instead of touching every frame.
    """
    filters = _mel_filters(n_mels)
    bins, nyquist = filters.shape[0], SAMPLE_RATE / 2
    f = np.linspace(0, nyquist, bins)
    low = boundary_hz * min(alpha, 1.0)  # where the warp bends, in output frequency
    warped = np.where(
        f <= low / alpha,
        f * alpha,
        nyquist - (nyquist - low) / (nyquist - low / alpha) * (nyquist - f),
    )
    source = np.interp(f, warped, f) / (nyquist / (bins - 1))  # fractional source bin
    left = np.minimum(np.floor(source).astype(int), bins - 1)
    right, weight = np.minimum(left + 1, bins - 1), source - left
    rows = np.arange(bins)
    warp = np.zeros((bins, bins))
    np.add.at(warp, (rows, left), 1 - weight)
    np.add.at(warp, (rows, right), weight)
    return warp.T @ filters


def mel_features(audio: np.ndarray, filters: np.ndarray, frames: int = N_FRAMES) -> np.ndarray:
    """(n_mels, frames) log-mel with any filterbank, computed exactly as transformers'
    WhisperFeatureExtractor does (torch path): with Whisper's filters it equals
    `audio.log_mel`, which tests check."""
    n_fft = feature_extractor(filters.shape[1]).n_fft
    x = torch.from_numpy(_fit(np.asarray(audio, dtype=np.float32), frames * HOP_LENGTH))[None]
    stft = torch.stft(x, n_fft, HOP_LENGTH, window=torch.hann_window(n_fft), return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = torch.from_numpy(filters).to(torch.float32).T @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()[0]


def spec_augment(
    features: np.ndarray, rng: np.random.Generator, config: SpecAugmentConfig, frames: int
) -> np.ndarray:
    """Frequency masks over all frames and time masks within the clip's own `frames` (its
    padding is silence already), widths drawn from the configured ranges.

    Masks take the clip's silence value (its maximum - 2, what zero padding becomes), not
    the mean: Whisper's features are not mean-normalised, and the silence floor is what the
    model sees for "nothing here" after every clip, so a mask reads as missing sound rather
    than as a grey band it never met in training.
    """
    out = features.copy()
    value = features.max() - SILENCE_BELOW_MAX
    for start, width in _spans(rng, config.freq_masks, config.freq_width, out.shape[0]):
        out[start : start + width, :] = value
    clip = min(frames, out.shape[1])
    for start, width in _spans(rng, config.time_masks, config.time_width, clip):
        out[:, start : start + width] = value
    return out


def _spans(
    rng: np.random.Generator, count: int, widths: list[int], size: int
) -> list[tuple[int, int]]:
    """`count` (start, width) spans inside [0, size), widths uniform in `widths`."""
    width = np.minimum(rng.integers(widths[0], widths[1], size=count, endpoint=True), size)
    start = rng.integers(0, size - width + 1)
    return list(zip(start.tolist(), width.tolist(), strict=True))


# --- the augmenter -------------------------------------------------------------------------


def _on(config: AugmentConfig) -> bool:
    return any(getattr(config, name).p > 0 for name in STREAMS)


class Augmenter:
    """Draws and applies a config's augmentations to one training clip at a time;
    `by_source` (data.train index -> block) replaces them for one manifest's clips."""

    def __init__(
        self, config: AugmentConfig, seed: int, by_source: dict[int, AugmentConfig] | None = None
    ) -> None:
        self.config, self.seed = config, seed % 2**64  # seed sequences take no negatives
        folder = config.noise.folder
        self.noise = NoiseBank(resolve_path(folder)) if config.noise.p > 0 and folder else None
        self.by_source = {
            s: Augmenter(block, seed) if _on(block) else None
            for s, block in (by_source or {}).items()
        }

    def for_source(self, source: int) -> Augmenter | None:
        """The augmenter of clips from data.train[`source`]: None when nothing is on."""
        if source in self.by_source:
            return self.by_source[source]
        return self if _on(self.config) else None

    def _draw(self, name: str, epoch: int, index: int) -> np.random.Generator | None:
        """The Generator for augmentation `name` of clip `index` in `epoch`, or None when
        its coin (the Generator's first draw) says not this time."""
        rng = np.random.default_rng([self.seed, epoch, index, STREAMS.index(name)])
        p = getattr(self.config, name).p
        return rng if p > 0 and rng.random() < p else None

    def waveform(self, audio: np.ndarray, epoch: int, index: int) -> tuple[np.ndarray, dict]:
        """The augmented 16 kHz waveform and what was drawn. Only speed changes the length."""
        c, applied = self.config, {}
        if (rng := self._draw("speed", epoch, index)) is not None:
            # Never slower than fits Whisper's 30 s window, so the label stays whole.
            factor = max(float(rng.choice(c.speed.factors)), len(audio) / (N_FRAMES * HOP_LENGTH))
            audio, applied["speed"] = change_speed(audio, factor), factor
        if (rng := self._draw("tempo", epoch, index)) is not None:
            longest = N_FRAMES * HOP_LENGTH  # as for speed: never slower than fits 30 s
            rate = max(float(rng.uniform(*c.tempo.rate)), len(audio) / longest)
            audio, applied["tempo"] = time_stretch(audio, rate), rate
        if (rng := self._draw("pitch", epoch, index)) is not None:
            semitones = float(rng.uniform(*c.pitch.semitones))
            audio, applied["semitones"] = pitch_shift(audio, semitones), semitones
        if self.noise is not None and (rng := self._draw("noise", epoch, index)) is not None:
            snr = float(rng.uniform(*c.noise.snr_db))
            audio, applied["snr_db"] = (
                mix_noise(audio, self.noise.sample(rng, len(audio)), snr),
                snr,
            )
        # Gain last: a recording level applies to the speech and the room noise alike.
        if (rng := self._draw("gain", epoch, index)) is not None:
            db = float(rng.uniform(*c.gain.db))
            audio, applied["gain_db"] = apply_gain(audio, db), db
        return audio, applied

    def features(
        self, audio: np.ndarray, n_mels: int, frames: int, epoch: int, index: int
    ) -> tuple[np.ndarray, dict]:
        """(n_mels, frames) log-mel of `audio` with VTLP and SpecAugment as drawn."""
        c, applied = self.config, {}
        if (rng := self._draw("vtlp", epoch, index)) is not None:
            alpha = applied["vtlp_alpha"] = float(rng.uniform(*c.vtlp.alpha))
            features = mel_features(audio, vtlp_filters(n_mels, alpha, c.vtlp.boundary_hz), frames)
        else:
            features = log_mel(audio, n_mels, frames)
        if (rng := self._draw("spec_augment", epoch, index)) is not None:
            features = spec_augment(features, rng, c.spec_augment, len(audio) // HOP_LENGTH)
            applied["spec_augment"] = True
        return features, applied


def build_augmenter(
    config: AugmentConfig, seed: int, data: DataConfig | None = None
) -> Augmenter | None:
    """An Augmenter when any augmentation has p > 0, in `config` or in a block of
    `data.source_augment`, else None (training as before)."""
    blocks = data.source_augment if data else {}
    by_source = {source_index(key, data.train): block for key, block in blocks.items()}
    if not _on(config) and not any(map(_on, by_source.values())):
        return None
    return Augmenter(config, seed, by_source)


def describe(config: AugmentConfig, data: DataConfig | None = None) -> str:
    """One line for reports: each augmentation that is on, with its settings (and each
    data.source_augment block's, after its manifest)."""
    if data and data.source_augment:
        blocks = "; ".join(f"{k}: {describe(b)}" for k, b in data.source_augment.items())
        return f"{describe(config)} | per source: {blocks}"
    parts = []
    for name in STREAMS:
        settings = vars(getattr(config, name))
        if settings["p"] > 0:
            parts.append(f"{name} ({', '.join(f'{k} {v}' for k, v in settings.items())})")
    return "; ".join(parts) or "none"
