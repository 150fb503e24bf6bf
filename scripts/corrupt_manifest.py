"""Make a corrupted copy of a manifest: the bad inputs kidwhisper must survive, from real audio.

Each kind below turns one real entry (its audio and its line) into a bad one, or into an
awkward but valid one (stereo, other sample rates) that must be kept. The reliability tests
build their inputs with these functions; with `--fraction`, a whole training manifest is
corrupted for the "5% bad entries" run (docs/reliability.md):

    python scripts/corrupt_manifest.py ../shared/data/so762-kids/train.jsonl /tmp/bad \\
        --fraction 0.05 --seed 0

writes /tmp/bad/train.jsonl (every line, the chosen ones corrupted, audio paths absolute),
/tmp/bad/audio/ (the corrupted clips) and /tmp/bad/expected.json (entry -> the reason the
run must report, or null for entries it must keep).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

# What a kind returns: the manifest line(s) (bytes) and, per line, the reason a run must
# report for it (None: the entry must be used). Reasons are kidwhisper's categories.
Corrupted = list[tuple[bytes, str | None]]


def _line(row: dict) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


def _audio(row: dict, manifest_dir: Path) -> tuple[np.ndarray, int]:
    return sf.read(manifest_dir / row["audio_path"], dtype="float32")


def _moved(row: dict, out: Path, name: str, **changes) -> dict:
    return {**row, "audio_path": str(out / name), **changes}


def missing_audio(row, src, out) -> Corrupted:
    return [(_line(_moved(row, out, f"{row['utterance_id']}_gone.flac")), "missing audio")]


def zero_byte(row, src, out) -> Corrupted:
    (out / f"{row['utterance_id']}_zero.flac").write_bytes(b"")
    return [(_line(_moved(row, out, f"{row['utterance_id']}_zero.flac")), "empty file")]


def truncated(row, src, out) -> Corrupted:
    data = (src / row["audio_path"]).read_bytes()
    (out / f"{row['utterance_id']}_cut.flac").write_bytes(data[: len(data) // 2])
    return [(_line(_moved(row, out, f"{row['utterance_id']}_cut.flac")), "truncated")]


def not_audio(row, src, out) -> Corrupted:
    (out / f"{row['utterance_id']}_text.flac").write_bytes(b"<html>404 Not Found</html>\n" * 40)
    return [(_line(_moved(row, out, f"{row['utterance_id']}_text.flac")), "not audio")]


def silence(row, src, out) -> Corrupted:
    audio, rate = _audio(row, src)
    sf.write(out / f"{row['utterance_id']}_silent.flac", np.zeros_like(audio), rate)
    return [(_line(_moved(row, out, f"{row['utterance_id']}_silent.flac")), "silent")]


def nan_samples(row, src, out) -> Corrupted:
    audio, rate = _audio(row, src)
    audio[len(audio) // 3 :: 97] = np.nan  # float WAV is the format that can hold NaN
    sf.write(out / f"{row['utterance_id']}_nan.wav", audio, rate, subtype="FLOAT")
    return [(_line(_moved(row, out, f"{row['utterance_id']}_nan.wav")), "NaN or inf samples")]


def far_too_long(row, src, out) -> Corrupted:
    """A 95 s recording with the one short label: the manifest's duration gives it away."""
    audio, rate = _audio(row, src)
    long = np.resize(audio, 95 * rate)
    sf.write(out / f"{row['utterance_id']}_long.flac", long, rate)
    changes = {"audio_duration_sec": 95.0}
    return [(_line(_moved(row, out, f"{row['utterance_id']}_long.flac", **changes)), "too long")]


def too_long_unlabelled(row, src, out) -> Corrupted:
    """The same, with no duration in the manifest: only loading the audio finds it."""
    audio, rate = _audio(row, src)
    sf.write(out / f"{row['utterance_id']}_long2.flac", np.resize(audio, 62 * rate), rate)
    moved = _moved(row, out, f"{row['utterance_id']}_long2.flac")
    moved.pop("audio_duration_sec", None)
    return [(_line(moved), "too long")]


def empty_text(row, src, out) -> Corrupted:
    return [(_line({**row, "orthographic_text": "  \t "}), "empty text")]


def runaway_label(row, src, out) -> Corrupted:
    text = " ".join([row["orthographic_text"]] * 200)  # far beyond 448 decoder positions
    return [(_line({**row, "orthographic_text": text}), "label too long")]


def not_utf8(row, src, out) -> Corrupted:
    return [(_line(row).replace(b'"orthographic_text": "', b'"orthographic_text": "\xff\xfe'),
             "not UTF-8")]  # fmt: skip


def malformed(row, src, out) -> Corrupted:
    return [(_line(row)[:-7], "malformed line")]


def duplicate_id(row, src, out) -> Corrupted:
    """The entry twice: the first is used, the second reported."""
    return [(_line(row), None), (_line(row), "duplicate id")]


def stereo(row, src, out) -> Corrupted:
    audio, rate = _audio(row, src)
    both = np.stack([audio, 0.5 * audio], axis=1)
    sf.write(out / f"{row['utterance_id']}_stereo.flac", both, rate)
    return [(_line(_moved(row, out, f"{row['utterance_id']}_stereo.flac")), None)]


def resampled(rate: int) -> Callable:
    def kind(row, src, out) -> Corrupted:
        import soxr

        audio, native = _audio(row, src)
        name = f"{row['utterance_id']}_{rate}.wav"
        sf.write(out / name, soxr.resample(audio, native, rate), rate)
        return [(_line(_moved(row, out, name)), None)]

    kind.__name__ = f"rate_{rate}"
    return kind


BAD = [
    missing_audio, zero_byte, truncated, not_audio, silence, nan_samples, far_too_long,
    too_long_unlabelled, empty_text, runaway_label, not_utf8, malformed, duplicate_id,
]  # fmt: skip
AWKWARD = [stereo, resampled(8000), resampled(22050), resampled(44100), resampled(48000)]
KINDS = {k.__name__: k for k in BAD + AWKWARD}


def corrupt(manifest: Path, out: Path, fraction: float, seed: int = 0) -> dict[str, str | None]:
    """Write out/train.jsonl with `fraction` of the entries turned bad (cycling through every
    bad kind) and as many made awkward; returns entry -> reason expected."""
    lines = manifest.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    rng = random.Random(seed)
    picked = rng.sample(range(len(rows)), 2 * max(1, round(fraction * len(rows))))
    half = len(picked) // 2
    plan = {i: BAD[n % len(BAD)] for n, i in enumerate(picked[:half])}
    plan |= {i: AWKWARD[n % len(AWKWARD)] for n, i in enumerate(picked[half:])}
    (out / "audio").mkdir(parents=True, exist_ok=True)
    written, expected = [], {}
    for i, row in enumerate(rows):
        row = {**row, "audio_path": str((manifest.parent / row["audio_path"]).resolve())}
        kind = plan.get(i)
        if kind is None:
            written.append(_line(row))
            continue
        for number, (line, reason) in enumerate(kind(row, manifest.parent, out / "audio")):
            written.append(line)
            key = row["utterance_id"] if number == 0 else f"{row['utterance_id']}#{number}"
            expected[key] = reason
    (out / "train.jsonl").write_bytes(b"\n".join(written) + b"\n")
    (out / "expected.json").write_text(json.dumps(expected, indent=1), encoding="utf-8")
    return expected


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--fraction", type=float, default=0.05, help="of entries made bad")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    expected = corrupt(args.manifest, args.out, args.fraction, args.seed)
    bad = sum(reason is not None for reason in expected.values())
    print(f"{args.out / 'train.jsonl'}: {bad} bad entries, {len(expected) - bad} awkward but valid")


if __name__ == "__main__":
    main()
