"""Transcription recipe: audio files, folders or manifests in, transcripts out (no references).

Inputs are audio files, folders (searched recursively for files libsndfile reads; other files
are skipped and counted) and competition jsonl manifests (`utterance_id`, `audio_path`
relative to the manifest; no text needed). A file's id is its manifest id, its path relative
to the folder it was found in, or the path as given.

Whisper hears at most 30 s at a time, so a longer file is split into windows of at most 30 s,
each cut at the quietest 100 ms frame of its last 5 s (between words where there is a pause);
each window is decoded as its own item of `inference.transcribe` and the texts are joined in
order. A file that cannot be read gets an empty transcript, is logged and is counted in the
summary; nothing is dropped silently.

Output formats: ``jsonl`` (`utterance_id`, `orthographic_text`, `audio_path`, `duration`),
``txt`` (``id<TAB>text``) and ``srt`` (one cue per window, timed from the start of its file;
when more than one file is transcribed each cue's first line is the file's id).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from kidwhisper.data.audio import CHUNK_SECONDS, SAMPLE_RATE, AudioError, load_audio
from kidwhisper.data.dataset import Utterance, read_manifest
from kidwhisper.errors import UserError
from kidwhisper.files import atomic_write_text
from kidwhisper.inference.batching import transcribe
from kidwhisper.inference.decoding import DecodingOptions

if TYPE_CHECKING:
    from kidwhisper.models.factory import WhisperModel

log = logging.getLogger(__name__)

# Suffixes of audio formats libsndfile reads (soundfile.available_formats()); left out are
# suffixes that mostly name other files (.mat, .htk features, .xi instruments).
AUDIO_SUFFIXES = frozenset(
    {".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".aifc"}
    | {".au", ".snd", ".caf", ".w64", ".rf64", ".sph", ".nist", ".voc", ".sd2", ".paf"}
    | {".pvf", ".avr", ".ircam", ".wve", ".sds"}
)
# Audio libsndfile cannot read: tried anyway, so they are reported as unreadable, not skipped.
UNSUPPORTED_SUFFIXES = frozenset({".m4a", ".aac", ".mp4", ".wma"})
FORMATS = {".jsonl": "jsonl", ".txt": "txt", ".tsv": "txt", ".srt": "srt"}
SEARCH_SECONDS = 5.0  # a window's cut is looked for in its last 5 s
FRAME_SECONDS = 0.1  # ... as the quietest 100 ms frame there


class InputError(UserError, ValueError):
    """Inputs or an output that cannot be used; the message names the path."""


@dataclass
class FileTranscript:
    """One input file: its windows (seconds from its start) and a text per window."""

    utterance_id: str
    audio: Path
    duration: float | None = None  # None: not even its header could be read
    windows: list[tuple[float, float]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(" ".join(t.split()) for t in self.texts if t.strip())


@dataclass
class TranscriptionResult:
    files: list[FileTranscript]
    skipped: list[Path] = field(default_factory=list)  # non-audio files found in folders
    wall_seconds: float = 0.0

    @property
    def audio_seconds(self) -> float:
        return sum(f.duration or 0.0 for f in self.files if not f.errors)

    @property
    def failed(self) -> list[FileTranscript]:
        return [f for f in self.files if f.errors]

    @property
    def real_time_factor(self) -> float | None:
        """Wall time per second of audio (below 1: faster than real time)."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else None

    def summary_lines(self) -> list[str]:
        rtf = self.real_time_factor
        speed = f"real-time factor {rtf:.4f} ({1 / rtf:.1f}x real time)" if rtf else "no audio"
        lines = [
            f"files: {len(self.files)}, audio: {self.audio_seconds / 3600:.3f} h, "
            f"wall: {self.wall_seconds:.1f} s, {speed}"
        ]
        split = [f for f in self.files if len(f.windows) > 1]
        if split:
            windows = sum(len(f.windows) for f in split)
            lines.append(
                f"split {len(split)} file(s) over {CHUNK_SECONDS} s into {windows} windows"
            )
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} non-audio file(s): {_names(self.skipped)}")
        if self.failed:
            ids = _names([f.utterance_id for f in self.failed])
            lines.append(
                f"{len(self.failed)} file(s) unreadable or not decoded, "
                f"empty or partial transcript: {ids}"
            )
        return lines


def _names(items: Sequence[object], shown: int = 5) -> str:
    names = ", ".join(str(item) for item in items[:shown])
    return names + (f" and {len(items) - shown} more" if len(items) > shown else "")


def output_format(out: str | Path, fmt: str | None = None) -> str:
    """`fmt` if given, else the format the output's suffix names."""
    if Path(out).is_dir():
        raise InputError(f"{out}: is a folder; --out takes a file")
    if fmt is not None:
        if fmt not in FORMATS.values():
            raise InputError(f"unknown output format {fmt!r}; use jsonl, txt or srt")
        return fmt
    found = FORMATS.get(Path(out).suffix.lower())
    if found is None:
        raise InputError(f"{out}: cannot tell the output format from its suffix; pass --format")
    return found


def collect_inputs(paths: Sequence[str | Path]) -> tuple[list[Utterance], list[Path]]:
    """Utterances for every audio file, folder and manifest in `paths`, in order, and the
    non-audio files skipped in folders."""
    utterances: list[Utterance] = []
    skipped: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if _is_audio(file):
                    utterances.append(Utterance(file.relative_to(path).as_posix(), file, None))
                else:
                    skipped.append(file)
        elif path.suffix.lower() == ".jsonl":
            utterances += read_manifest(path, require_text=False)
        elif path.is_file():
            utterances.append(Utterance(str(path), path, None))
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    seen: dict[str, Path] = {}
    for utt in utterances:
        if utt.utterance_id in seen:
            raise InputError(
                f"two inputs have the id {utt.utterance_id!r}: {seen[utt.utterance_id]} and "
                f"{utt.audio}; give their common parent folder instead"
            )
        seen[utt.utterance_id] = utt.audio
    if skipped:
        log.info("skipped %d non-audio file(s): %s", len(skipped), _names(skipped))
    return utterances, skipped


def _is_audio(path: Path) -> bool:
    suffix = path.suffix.lower()
    return not path.name.startswith(".") and suffix in AUDIO_SUFFIXES | UNSUPPORTED_SUFFIXES


def split_windows(
    audio: np.ndarray,
    max_seconds: float = CHUNK_SECONDS,
    search_seconds: float = SEARCH_SECONDS,
    frame_seconds: float = FRAME_SECONDS,
    rate: int = SAMPLE_RATE,
) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of at most `max_seconds` covering `audio`, each cut in the
    middle of the quietest `frame_seconds` frame of its last `search_seconds`."""
    size, search, frame = (round(s * rate) for s in (max_seconds, search_seconds, frame_seconds))
    if not 0 < frame <= search < size:
        raise ValueError("need 0 < frame_seconds <= search_seconds < max_seconds")
    bounds, start = [], 0
    while len(audio) - start > size:
        low = start + size - search
        frames = audio[low : low + search // frame * frame].reshape(-1, frame)
        energy = np.square(frames, dtype=np.float64).mean(axis=1)
        quietest = len(energy) - 1 - int(np.argmin(energy[::-1]))  # the latest of ties
        cut = low + quietest * frame + frame // 2
        bounds.append((start, cut))
        start = cut
    bounds.append((start, len(audio)))
    return bounds


def plan_windows(utterances: list[Utterance]) -> tuple[list[FileTranscript], dict[str, tuple]]:
    """A `FileTranscript` per input and the items to decode: {item id: (file, window, utt)}.
    Files over 30 s are read here to find their cuts; others are only probed."""
    files: list[FileTranscript] = []
    items: dict[str, tuple[FileTranscript, int, Utterance]] = {}
    for utt in utterances:
        file = FileTranscript(utt.utterance_id, utt.audio, _header_seconds(utt.audio))
        files.append(file)
        if file.duration is None or file.duration <= CHUNK_SECONDS:
            file.windows, file.texts = [(0.0, file.duration or 0.0)], [""]
            whole = Utterance(utt.utterance_id, utt.audio, None, duration=file.duration)
            _add(items, whole, file, 0)
            continue
        try:
            audio = load_audio(utt.audio)
        except AudioError as err:
            log.warning("cannot read %s: %s", utt.utterance_id, err)
            file.errors.append(str(err))
            continue
        file.duration = len(audio) / SAMPLE_RATE
        bounds = split_windows(audio)
        file.windows = [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in bounds]
        file.texts = [""] * len(bounds)
        for k, (start, end) in enumerate(file.windows):
            item = (
                f"{utt.utterance_id} [{k + 1}/{len(bounds)}]"
                if len(bounds) > 1
                else utt.utterance_id
            )
            window = Utterance(item, utt.audio, None, duration=end - start, start=start, end=end)
            _add(items, window, file, k)
        log.info("%s: %.1f s split into %d windows", utt.utterance_id, file.duration, len(bounds))
    return files, items


def _add(items: dict, utt: Utterance, file: FileTranscript, window: int) -> None:
    if utt.utterance_id in items:  # only a window's id can clash with an input's
        raise InputError(f"the id {utt.utterance_id!r} is both an input and a window of one")
    items[utt.utterance_id] = (file, window, utt)


def _header_seconds(path: Path) -> float | None:
    try:
        return sf.info(path).duration
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError):
        return None  # reading it later says why


def transcribe_paths(
    wm: WhisperModel,
    paths: Sequence[str | Path],
    batch_size: int = 16,
    options: DecodingOptions | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> TranscriptionResult:
    """Transcribe every input of `paths` (files, folders, manifests), long files by window."""
    start = time.perf_counter()
    utterances, skipped = collect_inputs(paths)
    if not utterances:
        raise InputError(f"no audio files in {', '.join(str(p) for p in paths)}")
    files, items = plan_windows(utterances)
    pending = [utt for _, _, utt in items.values()]
    texts, errors = transcribe(wm, pending, batch_size, options, num_workers, progress)
    for item, (file, k, _) in items.items():
        file.texts[k] = texts.get(item, "")
    for item, error in errors:
        items[item][0].errors.append(error)
    hint = [f for f in files if f.errors and f.audio.suffix.lower() in UNSUPPORTED_SUFFIXES]
    if hint:
        log.warning(
            "libsndfile cannot read %s; convert them (ffmpeg -i x.m4a x.flac)", _names(hint)
        )
    return TranscriptionResult(files, skipped, time.perf_counter() - start)


def transcribe_to_file(
    wm: WhisperModel,
    paths: Sequence[str | Path],
    out: str | Path,
    fmt: str | None = None,
    **kwargs,
) -> TranscriptionResult:
    """`transcribe_paths`, then write the transcripts to `out`; the wall time covers both
    (not the model's loading)."""
    start = time.perf_counter()
    out, fmt = Path(out), output_format(out, fmt)
    if any(Path(p).is_file() and Path(p).resolve() == out.resolve() for p in paths):
        raise InputError(f"{out}: the output would overwrite an input")
    result = transcribe_paths(wm, paths, **kwargs)
    write_transcripts(result, out, fmt)
    result.wall_seconds = time.perf_counter() - start
    return result


def write_transcripts(result: TranscriptionResult, out: str | Path, fmt: str) -> Path:
    """Write one line (jsonl, txt) or one srt block per window, in input order."""
    out = Path(out)
    if fmt == "jsonl":
        lines = [json.dumps(_row(f), ensure_ascii=False) + "\n" for f in result.files]
    elif fmt == "txt":
        lines = [f"{f.utterance_id}\t{f.text}\n" for f in result.files]
    elif fmt == "srt":
        lines = [to_srt(result.files)]
    else:
        raise InputError(f"unknown output format {fmt!r}; use jsonl, txt or srt")
    atomic_write_text(out, "".join(lines))
    log.info("wrote %d transcripts to %s (%s)", len(result.files), out, fmt)
    return out


def _row(file: FileTranscript) -> dict:
    return {
        "utterance_id": file.utterance_id,
        "orthographic_text": file.text,
        "audio_path": os.path.abspath(file.audio),
        "duration": None if file.duration is None else round(file.duration, 3),
    }


def to_srt(files: list[FileTranscript]) -> str:
    """SubRip text: a cue per window with text, timed from the start of its file."""
    blocks, named = [], len(files) > 1
    for file in files:
        for (start, end), text in zip(file.windows, file.texts, strict=True):
            text = " ".join(text.split())
            if text:
                lines = [file.utterance_id, text] if named else [text]
                timing = f"{srt_time(start)} --> {srt_time(end)}"
                blocks.append("\n".join([str(len(blocks) + 1), timing, *lines]) + "\n")
    return "\n".join(blocks)


def srt_time(seconds: float) -> str:
    """``HH:MM:SS,mmm``."""
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"
