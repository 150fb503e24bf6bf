"""`kidwhisper transcribe`: inputs, long-file windows, output formats, on real audio."""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from kidwhisper.cli.main import main
from kidwhisper.data.audio import SAMPLE_RATE, load_audio, log_mel
from kidwhisper.data.dataset import SpeechDataset, Utterance, clip_seconds, read_manifest
from kidwhisper.inference.transcription import (
    InputError,
    TranscriptionResult,
    collect_inputs,
    output_format,
    split_windows,
    srt_time,
    transcribe_paths,
    transcribe_to_file,
    write_transcripts,
)

GAP = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)  # 0.5 s of silence between clips


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def recall(part: str, whole: str) -> float:
    """Share of `part`'s words found in `whole`."""
    found = set(words(whole))
    return sum(w in found for w in words(part)) / max(1, len(words(part)))


@pytest.fixture(scope="module")
def wm(tiny_en):
    """tiny.en with the short encoder input (fast on CPU); restored afterwards."""
    saved, tiny_en.audio_context = tiny_en.audio_context, "batch"
    yield tiny_en
    tiny_en.audio_context = saved


@pytest.fixture(scope="module")
def clips(real_manifest: Path) -> list[Path]:
    """Real clips of at most 4.5 s (so every 5 s stretch of a concatenation has a gap)."""
    short = [u.audio for u in read_manifest(real_manifest) if 1.0 <= clip_seconds(u) <= 4.5]
    assert len(short) >= 6
    return short


def concat(paths: list[Path], seconds: float) -> np.ndarray:
    """Clips of `paths` (cycling) with gaps until at least `seconds` long."""
    parts, total, k = [], 0, 0
    while total < seconds * SAMPLE_RATE:
        parts += [load_audio(paths[k % len(paths)]), GAP]
        total += len(parts[-2]) + len(GAP)
        k += 1
    return np.concatenate(parts[:-1])


@pytest.fixture(scope="module")
def folder(tmp_path_factory, clips: list[Path]) -> Path:
    """a.flac, b.flac, sub/a_44k_stereo.wav, notes.txt, corrupt.flac, long.flac (two halves
    with a gap), part1.flac and part2.flac (the halves alone)."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "sub").mkdir()
    for name, clip in (("a.flac", clips[0]), ("b.flac", clips[1])):
        (root / name).write_bytes(clip.read_bytes())
    audio = load_audio(clips[0])
    stereo = soxr.resample(np.stack([audio, audio], axis=1), SAMPLE_RATE, 44_100)
    sf.write(root / "sub" / "a_44k_stereo.wav", stereo, 44_100)
    (root / "notes.txt").write_text("not audio\n")
    (root / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)
    part1, part2 = concat(clips[2:7], 16), concat(clips[7:12] or clips[:5], 16)
    sf.write(root / "part1.flac", part1, SAMPLE_RATE)
    sf.write(root / "part2.flac", part2, SAMPLE_RATE)
    sf.write(root / "long.flac", np.concatenate([part1, GAP, part2]), SAMPLE_RATE)
    return root


@pytest.fixture(scope="module")
def result(wm, folder: Path) -> TranscriptionResult:
    return transcribe_paths(wm, [folder], batch_size=4, progress=False)


def by_id(result: TranscriptionResult) -> dict:
    return {f.utterance_id: f for f in result.files}


def test_windows_are_cut_at_the_quietest_frame():
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(70 * SAMPLE_RATE)).astype(np.float32)
    audio[int(27.3 * SAMPLE_RATE) : int(27.5 * SAMPLE_RATE)] *= 0.01  # a pause
    bounds = split_windows(audio)
    assert bounds[0] == (0, bounds[0][1]) and bounds[-1][1] == len(audio)
    assert all(a[1] == b[0] for a, b in pairwise(bounds))
    assert all(0 < end - start <= 30 * SAMPLE_RATE for start, end in bounds)
    assert 27.3 <= bounds[0][1] / SAMPLE_RATE <= 27.5
    assert len(bounds) == 3
    assert split_windows(audio[: 30 * SAMPLE_RATE]) == [(0, 30 * SAMPLE_RATE)]


def test_a_segment_is_a_slice_of_its_file(clips: list[Path]):
    audio = load_audio(clips[0])
    whole = Utterance("whole", clips[0], None)
    part = Utterance("part", clips[0], None, start=0.5, end=1.25)
    empty = Utterance("empty", clips[0], None, start=99.0, end=100.0)
    dataset = SpeechDataset([whole, part, empty], 80)
    assert dataset[0]["duration"] == len(audio) / SAMPLE_RATE
    assert dataset[1]["duration"] == 0.75
    expected = log_mel(audio[8000:20000], 80)
    np.testing.assert_array_equal(dataset[1]["input_features"], expected)
    assert "empty" in dataset[2]["error"]


def test_inputs_from_folders_files_and_manifests(folder: Path, tmp_path: Path):
    utterances, skipped = collect_inputs([folder])
    ids = [u.utterance_id for u in utterances]
    assert ids == sorted(ids) and "sub/a_44k_stereo.wav" in ids and "corrupt.flac" in ids
    assert skipped == [folder / "notes.txt"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"utterance_id": "x", "audio_path": str(folder / "a.flac")}))
    utterances, _ = collect_inputs([manifest, folder / "b.flac"])
    assert [u.utterance_id for u in utterances] == ["x", str(folder / "b.flac")]
    with pytest.raises(InputError, match=r"a\.flac"):
        collect_inputs([folder, folder])
    with pytest.raises(FileNotFoundError):
        collect_inputs([tmp_path / "missing.flac"])
    assert output_format("x.srt") == "srt" and output_format("x.out", "txt") == "txt"
    with pytest.raises(InputError, match="--format"):
        output_format("x.out")


def test_folder_transcripts(result: TranscriptionResult, folder: Path, tmp_path: Path):
    files = by_id(result)
    assert len(result.files) == 7 and [p.name for p in result.skipped] == ["notes.txt"]
    assert [f.utterance_id for f in result.failed] == ["corrupt.flac"]
    assert files["corrupt.flac"].text == "" and "corrupt.flac" in files["corrupt.flac"].errors[0]
    assert words(files["a.flac"].text) and words(files["b.flac"].text)
    # the same speech at 44.1 kHz stereo in WAV reads as the same words
    assert recall(files["a.flac"].text, files["sub/a_44k_stereo.wav"].text) >= 0.75
    summary = "\n".join(result.summary_lines())
    assert "files: 7" in summary and "notes.txt" in summary and "corrupt.flac" in summary
    out = write_transcripts(result, tmp_path / "out.jsonl", "jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["utterance_id"] for r in rows] == [f.utterance_id for f in result.files]
    assert set(rows[0]) == {"utterance_id", "orthographic_text", "audio_path", "duration"}
    row = rows[[r["utterance_id"] for r in rows].index("a.flac")]
    assert Path(row["audio_path"]) == folder / "a.flac" and row["duration"] > 1
    txt = write_transcripts(result, tmp_path / "out.txt", "txt").read_text().splitlines()
    assert txt[0].split("\t") == [result.files[0].utterance_id, result.files[0].text]


def test_long_file_is_split_and_joined(result: TranscriptionResult, folder: Path):
    files = by_id(result)
    long = files["long.flac"]
    assert len(long.windows) >= 2 and len(long.texts) == len(long.windows)
    assert all(0 < end - start <= 30 for start, end in long.windows)
    assert long.windows[0][0] == 0 and long.windows[-1][1] == pytest.approx(long.duration)
    audio = load_audio(folder / "long.flac")
    for _, cut in long.windows[:-1]:  # every cut falls in a gap between clips
        at = round(cut * SAMPLE_RATE)
        assert not audio[at - 800 : at + 800].any()
    for part in ("part1.flac", "part2.flac"):
        assert len(files[part].windows) == 1
        assert recall(files[part].text, long.text) >= 0.6, (part, files[part].text, long.text)


def test_srt_cues(result: TranscriptionResult, tmp_path: Path):
    text = write_transcripts(result, tmp_path / "out.srt", "srt").read_text()
    blocks = [b.splitlines() for b in text.strip().split("\n\n")]
    assert [int(b[0]) for b in blocks] == list(range(1, len(blocks) + 1))
    times: dict[str, list[tuple[float, float]]] = {}
    for block in blocks:
        start, end = (parse_srt_time(t) for t in block[1].split(" --> "))
        assert 0 <= start < end
        times.setdefault(block[2], []).append((start, end))
    long = by_id(result)["long.flac"]
    assert times["long.flac"] == [(round(a, 3), round(b, 3)) for a, b in long.windows]
    assert all(a[1] <= b[0] for a, b in pairwise(times["long.flac"]))
    assert "corrupt.flac" not in times  # no speech, no cue
    assert srt_time(3725.5) == "01:02:05,500"


def parse_srt_time(value: str) -> float:
    match = re.fullmatch(r"(\d\d):(\d\d):(\d\d),(\d\d\d)", value)
    assert match, value
    h, m, s, ms = map(int, match.groups())
    return 3600 * h + 60 * m + s + ms / 1000


def test_manifest_input(wm, folder: Path, result: TranscriptionResult, tmp_path: Path):
    manifest = folder / "more" / "m.jsonl"
    manifest.parent.mkdir(exist_ok=True)
    rows = [{"utterance_id": "one", "audio_path": "../a.flac"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m.txt"
    done = transcribe_to_file(wm, [manifest], out, progress=False)
    assert done.files[0].text == by_id(result)["a.flac"].text
    assert out.read_text() == f"one\t{done.files[0].text}\n"
    with pytest.raises(InputError, match="overwrite"):
        transcribe_to_file(wm, [manifest], manifest, "jsonl")


def test_cli(wm, folder: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr("kidwhisper.models.factory.load_model", lambda *args, **kwargs: wm)
    out = tmp_path / "cli.jsonl"
    args = ["transcribe", "bundled:tiny.en", str(folder / "b.flac"), str(folder / "corrupt.flac")]
    assert main([*args, "--out", str(out), "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "files: 2" in printed and "real-time factor" in printed and "corrupt.flac" in printed
    assert len(out.read_text().splitlines()) == 2
    assert main([*args, "--out", str(tmp_path / "x.out")]) == 2
    assert "--format" in capsys.readouterr().err
