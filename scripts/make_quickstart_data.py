"""Synthesise the kidwhisper quickstart dataset.

The quickstart lets anyone run a fine-tune without access to real child speech. This script
speaks a fixed list of simple, child-like English sentences with eSpeak NG, shifts every clip
up in pitch and formants towards a child's voice, and writes the result in the DrivenData
"On Top of Pasketti" layout::

    <out>/audio/<utterance_id>.flac   16 kHz mono FLAC, 1 to 6 s each
    <out>/train.jsonl                 48 utterances from 6 synthetic voices
    <out>/dev.jsonl                   16 utterances from 2 other synthetic voices

Train and dev are disjoint in both voice and sentence. Everything is driven by fixed seeds,
so running the script twice writes the same jsonl files (and byte-identical FLACs, given the
same eSpeak NG and libsndfile builds).

The TTS engine is the eSpeak NG library (1.52) bundled in the ``espeakng-loader`` wheel,
called through ctypes, so only pip is needed (no apt package)::

    pip install -e '.[data]'    # espeakng-loader, scipy
    python scripts/make_quickstart_data.py          # add -v to log every clip

The voices, pitches and shifts below were tuned so that zero-shot Whisper tiny.en gets a
word error rate of roughly 40% (hard, like a child's voice, yet intelligible), which leaves
fine-tuning room to improve.

The output is eSpeak NG synthesis of sentences written for this project (see the dataset's
README.md for licensing).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import espeakng_loader
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

LOGGER = logging.getLogger("make_quickstart_data")

SEED = 20250704
TARGET_SR = 16_000
MIN_SEC, MAX_SEC = 1.0, 6.0
NOISE_DBFS = -80.0  # faint background noise so clips are not digitally silent
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "kidwhisper" / "assets" / "quickstart"

# Sentences written for this project. A few contain over-regularised forms that children
# produce and Whisper tends to "correct": goed, tooths, mouses, runned, eated, sheeps, ...
TRAIN_SENTENCES: tuple[str, ...] = (
    "the cat sat on the red mat",
    "i like to play with my dog",
    "my mom goed to the shop today",
    "the big bus is yellow",
    "we can see the moon at night",
    "i have two loose tooths",
    "the fish swims in the pond",
    "look at the little brown duck",
    "my sister has a pink hat",
    "the sun is hot today",
    "i want a cookie please",
    "dad reads me a book at bedtime",
    "the frog jumped into the water",
    "the bird is in the tree",
    "i can ride my bike fast",
    "the dog runned after the ball",
    "the pig is in the mud",
    "grandma made soup for lunch",
    "my teddy bear is soft",
    "it is raining outside",
    "we play in the sand",
    "the cow says moo",
    "i eated all my peas",
    "the baby is sleeping now",
    "put on your red boots",
    "the train goes choo choo",
    "i see three green apples",
    "my friend sam likes to sing",
    "the snow is cold and white",
    "mom and me baked a cake",
    "the kite flies up in the sky",
    "my foots are all wet",
    "the hen sat on her eggs",
    "we went to the zoo",
    "the box is on the table",
    "can i have some milk",
    "the bee is on the flower",
    "he digs a hole in the garden",
    "the star is shining bright",
    "i brushed my teeth this morning",
    "we sing a song at school",
    "my hat fell in the puddle",
    "i found a shiny rock",
    "the clock says it is time for bed",
    "we had pancakes for breakfast",
    "the monkey eats a banana",
    "i drawed a picture of my house",
    "it's my birthday today",
)
DEV_SENTENCES: tuple[str, ...] = (
    "the mouses ran under the bed",
    "can you jump up high",
    "the sheeps are on the hill",
    "i saw a big lion",
    "my cat likes to nap",
    "the car is going very fast",
    "the ant is very small",
    "the horse can run fast",
    "a little mouse lives in the wall",
    "my brother falled off the swing",
    "the boat floats on the lake",
    "the owl says hoo hoo",
    "don't step on the bug",
    "the teacher reads us a story",
    "we goed to the park yesterday",
    "the duck can swim in the pond",
)


@dataclass(frozen=True)
class ChildVoice:
    """One synthetic child: an eSpeak NG voice plus the settings that make it sound young.

    ``shift`` raises pitch and formants together by resampling (a shorter vocal tract);
    ``pitch`` and ``pitch_range`` are eSpeak's own 0-99 controls; ``wpm`` is the speaking
    rate heard after the shift.
    """

    child_id: str
    split: str
    espeak_name: str
    age_bucket: str
    pitch: int
    pitch_range: int
    wpm: int
    shift: float


# Train and dev use different voices. eSpeak pitch is pushed high and every clip is shifted
# up by ~1.15-1.35x, giving a median F0 of ~190-370 Hz depending on the voice.
# fmt: off
VOICES: tuple[ChildVoice, ...] = (
    #          child_id   split    eSpeak      age     pitch  range  wpm  shift
    ChildVoice("C_qs_01", "train", "en-us+f3", "5-7",  70,    60,    125, 1.20),
    ChildVoice("C_qs_02", "train", "en-us+f4", "8-11", 65,    50,    140, 1.15),
    ChildVoice("C_qs_03", "train", "en-us+m6", "8-11", 95,    60,    130, 1.25),
    ChildVoice("C_qs_04", "train", "en-us+f1", "3-4",  85,    70,    115, 1.25),
    ChildVoice("C_qs_05", "train", "en-us+m4", "5-7",  95,    60,    125, 1.30),
    ChildVoice("C_qs_06", "train", "en+f5",    "3-4",  75,    80,    110, 1.35),
    ChildVoice("C_qs_07", "dev",   "en-us+f2", "5-7",  70,    65,    120, 1.30),
    ChildVoice("C_qs_08", "dev",   "en-us+m2", "8-11", 95,    55,    130, 1.20),
)
# fmt: on


@dataclass(frozen=True)
class SpeechSettings:
    """The eSpeak NG parameters of one synthesis call."""

    voice: str
    wpm: int
    pitch: int
    pitch_range: int


@dataclass(frozen=True)
class Utterance:
    """A planned clip: which child says which sentence, with per-clip jitter applied."""

    utterance_id: str
    child: ChildVoice
    text: str
    speech: SpeechSettings
    shift: float


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakSynth:
    """Minimal ctypes wrapper around the libespeak-ng shipped by ``espeakng-loader``.

    eSpeak NG draws random numbers (e.g. for frication noise) and keeps filter state between
    calls, so output is reproducible only for the same sequence of calls in a fresh process
    with the same seed set before each call; :meth:`synth` takes that seed.
    """

    _AUDIO_OUTPUT_SYNCHRONOUS = 2
    _RATE, _PITCH, _RANGE = 1, 3, 4
    _CHARS_UTF8 = 1

    def __init__(self) -> None:
        """Load the library and initialise it for synchronous synthesis into memory."""
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        c_int, c_uint = ctypes.c_int, ctypes.c_uint
        lib.espeak_Initialize.argtypes = [c_int, c_int, ctypes.c_char_p, c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [c_int, c_int, c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            *(ctypes.c_char_p, ctypes.c_size_t, c_uint, c_int, c_uint, c_uint),
            *(ctypes.c_void_p, ctypes.c_void_p),
        ]
        data_path = espeakng_loader.get_data_path().encode()
        self.sample_rate: int = lib.espeak_Initialize(
            self._AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0
        )
        if self.sample_rate <= 0:
            raise RuntimeError("espeak_Initialize failed")
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._collect)  # keep a reference alive
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes.Array, num_samples: int, _events: int) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = keep synthesising

    def synth(self, text: str, speech: SpeechSettings, seed: int) -> np.ndarray:
        """Speak ``text`` and return float32 samples in [-1, 1] at ``self.sample_rate``."""
        if self._lib.espeak_SetVoiceByName(speech.voice.encode()) != 0:
            raise ValueError(f"unknown eSpeak NG voice {speech.voice!r}")
        params = {
            self._RATE: speech.wpm,
            self._PITCH: speech.pitch,
            self._RANGE: speech.pitch_range,
        }
        for param, value in params.items():
            self._lib.espeak_SetParameter(param, value, 0)
        self._lib.espeak_ng_SetRandSeed(seed)
        data = text.encode()
        self._chunks = []
        err = self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, self._CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err}")
        self._lib.espeak_Synchronize()
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


def shift_to_child(audio: np.ndarray, source_sr: int, factor: float) -> np.ndarray:
    """Raise pitch and formants by ``factor`` and resample to ``TARGET_SR``.

    The clip is reinterpreted as if recorded at ``source_sr * factor`` (played faster, so
    higher and shorter) and then resampled with a polyphase filter.
    """
    ratio = Fraction(TARGET_SR, round(source_sr * factor)).limit_denominator(2000)
    return resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)


def trim_silence(audio: np.ndarray, threshold: float = 1e-3, pad_sec: float = 0.15) -> np.ndarray:
    """Cut leading/trailing silence, keeping ``pad_sec`` of it on each side."""
    voiced = np.flatnonzero(np.abs(audio) > threshold)
    if voiced.size == 0:
        return audio
    pad = int(pad_sec * TARGET_SR)
    return audio[max(voiced[0] - pad, 0) : voiced[-1] + pad + 1]


def finish_clip(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Normalise to a random level, add faint noise and return int16 samples."""
    peak = float(np.max(np.abs(audio))) or 1.0
    audio = audio / peak * rng.uniform(0.35, 0.8)
    audio = audio + rng.normal(0.0, 10 ** (NOISE_DBFS / 20), audio.shape)
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)


def plan_utterances(rng: random.Random) -> list[Utterance]:
    """Deal each split's sentences out to its voices, jittering pitch, rate and shift."""
    plans: list[Utterance] = []
    for split, sentences in (("train", TRAIN_SENTENCES), ("dev", DEV_SENTENCES)):
        voices = [v for v in VOICES if v.split == split]
        order = rng.sample(range(len(sentences)), len(sentences))
        for i, sentence_idx in enumerate(order):
            child = voices[i % len(voices)]
            pitch = min(99, max(0, child.pitch + rng.randint(-8, 8)))
            wpm = child.wpm + rng.randint(-15, 15)
            shift = round(child.shift * rng.uniform(0.96, 1.04), 3)
            # eSpeak speaks slower so that the clip has the intended rate after the speed-up.
            espeak_wpm = max(80, round(wpm / shift))
            speech = SpeechSettings(child.espeak_name, espeak_wpm, pitch, child.pitch_range)
            plans.append(
                Utterance(
                    f"U_qs_{len(plans) + 1:04d}", child, sentences[sentence_idx], speech, shift
                )
            )
    return plans


def render(synth: EspeakSynth, plan: Utterance, seed: int) -> np.ndarray:
    """Synthesise one planned utterance as 16 kHz int16 samples."""
    raw = synth.synth(plan.text, plan.speech, seed)
    audio = trim_silence(shift_to_child(raw, synth.sample_rate, plan.shift))
    duration = len(audio) / TARGET_SR
    if not MIN_SEC <= duration <= MAX_SEC:
        raise ValueError(f"{plan.utterance_id} lasts {duration:.2f}s, outside the allowed range")
    return finish_clip(audio, np.random.default_rng(seed))


def write_clip(out_dir: Path, plan: Utterance, samples: np.ndarray) -> dict[str, object]:
    """Write one FLAC and return its manifest record (field order is the competition's)."""
    rel_path = f"audio/{plan.utterance_id}.flac"
    flac_path = out_dir / rel_path
    sf.write(flac_path, samples, TARGET_SR, format="FLAC", subtype="PCM_16")
    payload = flac_path.read_bytes()
    return {
        "utterance_id": plan.utterance_id,
        "child_id": plan.child.child_id,
        "session_id": plan.child.child_id.replace("C_", "S_", 1),
        "audio_path": rel_path,
        "audio_duration_sec": round(len(samples) / TARGET_SR, 3),
        "age_bucket": plan.child.age_bucket,
        "md5_hash": hashlib.md5(payload, usedforsecurity=False).hexdigest(),
        "filesize_bytes": len(payload),
        "orthographic_text": plan.text,
    }


def write_jsonl(path: Path, records: Sequence[dict[str, object]]) -> None:
    """Write ``records`` as JSON lines."""
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def build(out_dir: Path, seed: int = SEED) -> dict[str, list[dict[str, object]]]:
    """Generate the whole dataset under ``out_dir`` and return the records per split."""
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    for stale in audio_dir.glob("*.flac"):
        stale.unlink()
    synth = EspeakSynth()
    records: dict[str, list[dict[str, object]]] = {"train": [], "dev": []}
    for plan in plan_utterances(random.Random(seed)):
        clip_seed = seed + int(plan.utterance_id.rsplit("_", 1)[1])
        record = write_clip(out_dir, plan, render(synth, plan, clip_seed))
        records[plan.child.split].append(record)
        LOGGER.info("%s %.2fs %s", plan.utterance_id, record["audio_duration_sec"], plan.text)
    for split, split_records in records.items():
        write_jsonl(out_dir / f"{split}.jsonl", split_records)
    return records


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every clip")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    records = build(args.out, args.seed)
    all_records = records["train"] + records["dev"]
    total_sec = sum(float(r["audio_duration_sec"]) for r in all_records)
    total_mb = sum(int(r["filesize_bytes"]) for r in all_records) / 1e6
    print(
        f"wrote {len(records['train'])} train + {len(records['dev'])} dev clips "
        f"({total_sec:.1f}s, {total_mb:.2f} MB) to {args.out}"
    )


if __name__ == "__main__":
    main()
