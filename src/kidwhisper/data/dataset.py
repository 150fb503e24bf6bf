"""Manifests, datasets and the collator: competition jsonl in, model-ready batches out.

A manifest line is the competition's training schema (`utterance_id`, `audio_path`,
`audio_duration_sec`, `age_bucket`, `orthographic_text`, ...); `audio_path` is relative to
the manifest's folder. A clip that cannot be read is never dropped silently: the dataset
marks it, the collator leaves it out of the batch and counts it, and the caller reports it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset
from transformers import WhisperTokenizerFast

from kidwhisper.config import FULL, resolve_path
from kidwhisper.data.audio import (
    MISSING,
    SAMPLE_RATE,
    SILENCE_BELOW_MAX,
    AudioError,
    clip_frames,
    load_audio,
    log_mel,
)
from kidwhisper.data.problems import (
    DUPLICATE,
    EMPTY_TEXT,
    LABEL_TOO_LONG,
    MALFORMED,
    MAX_LOGGED,
    NOT_UTF8,
    SILENCE_PEAK,
    SILENT,
    DataProblems,
    duration_message,
    duration_problem,
)
from kidwhisper.data.text import SpecialTokens, encode_labels
from kidwhisper.errors import UserError

if TYPE_CHECKING:
    from kidwhisper.data.augment import Augmenter

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the cross-entropy loss skips


class ManifestError(UserError, ValueError):
    """A manifest line that cannot be used; the message names the file and line."""

    def __init__(self, message: str, reason: str = MALFORMED) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Utterance:
    utterance_id: str
    audio: Path
    text: str | None
    duration: float | None = None
    age_bucket: str | None = None
    speaker: str | None = None
    start: float = 0.0  # optional segment [start, end) of the file, in seconds
    end: float | None = None
    source: int = 0  # which of data.train it came from (for data.train_weights)


def read_manifest(
    path: str | Path,
    require_text: bool = True,
    problems: DataProblems | None = None,
    strict: bool | None = None,
) -> list[Utterance]:
    """Parse a competition-format jsonl file into utterances.

    Structural problems (lines not UTF-8 or not JSON, missing fields, fields of the wrong
    type, repeated ids) are, with `strict` (the default without `problems`: evaluation,
    transcription, curation), all collected and raised as one `ManifestError` that lists
    them, so one run shows every line to fix. Without `strict` (training) each goes to
    `problems` under its policy and the line is left out (the first of repeated ids is
    kept). With `problems` and `require_text`, empty texts are reported there and left out.
    """
    path = Path(path)
    strict = problems is None if strict is None else strict
    utterances, seen, bad = [], {}, []
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            where = f"{path}:{number}"
            try:
                utterance = _parse_line(raw, path.parent, where, require_text, seen)
            except ManifestError as err:
                if strict:
                    bad.append(str(err))
                else:
                    problems.add(where, err.reason, str(err))
                continue
            if utterance is None:
                continue
            if problems is not None and require_text and not utterance.text.strip():
                message = f"{where}: utterance {utterance.utterance_id} has empty text"
                problems.add(utterance.utterance_id, EMPTY_TEXT, message)
                continue
            seen[utterance.utterance_id] = number
            utterances.append(utterance)
    if bad:
        raise ManifestError(problem_list(path, bad))
    return utterances


def problem_list(path: Path, messages: list[str]) -> str:
    """One error for every bad line: the first MAX_LOGGED one per line, then a count."""
    shown = [f"  {m}" for m in messages[:MAX_LOGGED]]
    if len(messages) > MAX_LOGGED:
        shown.append(f"  ... and {len(messages) - MAX_LOGGED} more")
    head = f"{path}: {len(messages)} bad line(s); fix them all, then run again:"
    return "\n".join([head, *shown])


def _parse_line(
    raw: bytes, root: Path, where: str, require_text: bool, seen: dict[str, int]
) -> Utterance | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        message = f"{where}: not UTF-8 ({err.reason} at byte {err.start}); save the file as UTF-8"
        raise ManifestError(message, NOT_UTF8) from err
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        message = f"{where}: not valid JSON ({err.msg}, column {err.colno})"
        raise ManifestError(message, MALFORMED) from err
    utterance = _utterance(row, root, where, require_text)
    if utterance.utterance_id in seen:
        raise ManifestError(
            f"{where}: duplicate utterance_id {utterance.utterance_id} "
            f"(first at line {seen[utterance.utterance_id]})",
            DUPLICATE,
        )
    return utterance


def _field_problems(row: dict, required: list[str]) -> list[str]:
    """What is wrong with a line's fields: required strings missing or of another type,
    optional ones (age, speaker, duration) present but of the wrong type."""
    missing = [key for key in required if row.get(key) is None]
    found = [f"missing field(s) {missing}"] if missing else []
    optional = {"age_bucket": str, "child_id": str, "audio_duration_sec": int | float}
    expected = {**dict.fromkeys(required, str), **optional}
    for key, kind in expected.items():
        value = row.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            want = "a string" if kind is str else "a number"
            found.append(f"{key} must be {want}, got {type(value).__name__} {value!r}")
    return found


def _utterance(row: object, root: Path, where: str, require_text: bool) -> Utterance:
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    required = ["utterance_id", "audio_path"] + (["orthographic_text"] if require_text else [])
    wrong = _field_problems(row, required)
    if wrong:
        raise ManifestError(f"{where}: {'; '.join(wrong)}")
    duration = row.get("audio_duration_sec")
    return Utterance(
        utterance_id=row["utterance_id"],
        audio=root / row["audio_path"],
        text=row.get("orthographic_text"),
        duration=None if duration is None else float(duration),
        age_bucket=row.get("age_bucket"),
        speaker=row.get("child_id"),
    )


def clip_seconds(utterance: Utterance) -> float:
    """The clip's duration from its manifest, else from its file header (0 if unreadable:
    loading it later reports why)."""
    if utterance.duration is not None:
        return utterance.duration
    try:
        return sf.info(utterance.audio).duration
    except (sf.LibsndfileError, RuntimeError, OSError):
        return 0.0


def screen(
    utterances: list[Utterance], problems: DataProblems, seconds_range: tuple[float, float]
) -> list[Utterance]:
    """Training entries that pass the checks needing no audio: the file exists and the
    manifest's duration (when it has one) is in range. The rest are reported to `problems`;
    loading each clip finds the others (SpeechDataset)."""
    kept = []
    for utt in utterances:
        if not utt.audio.is_file():
            problems.add(utt.utterance_id, MISSING, f"{utt.audio}: audio file not found")
            continue
        reason = utt.duration is not None and duration_problem(utt.duration, *seconds_range)
        if reason:
            where = f"{utt.audio} (utterance {utt.utterance_id})"
            problems.add(
                utt.utterance_id, reason, duration_message(where, utt.duration, *seconds_range)
            )
            continue
        kept.append(utt)
    return kept


class SpeechDataset(Dataset):
    """Log-mel features (and labels, when the utterances have text) for each utterance.

    A clip that cannot be used comes back as an item with `error` (the message, naming
    the file) and `reason` instead of features. With labels (training), so do clips outside
    [min_seconds, max_seconds], silent clips and labels longer than the decoder allows;
    without them (decoding), only unreadable clips do. An `augmenter` changes training
    items only, drawing for (epoch, index): set the epoch with `set_epoch`.
    """

    def __init__(
        self,
        utterances: list[Utterance],
        n_mels: int,
        tokenizer: WhisperTokenizerFast | None = None,
        special: SpecialTokens | None = None,
        max_label_tokens: int = 448,
        context: str | float = FULL,
        seconds_range: tuple[float, float] = (0.0, float("inf")),
        augmenter: Augmenter | None = None,
    ) -> None:
        self.utterances, self.n_mels = utterances, n_mels
        self.augmenter, self.epoch = augmenter, 0
        self.context = context  # the encoder's input length, see models/short_input.py
        self.tokenizer, self.special = tokenizer, special
        self.max_label_tokens = max_label_tokens  # the decoder's position table
        self.seconds_range = seconds_range

    def __len__(self) -> int:
        return len(self.utterances)

    def set_epoch(self, epoch: int) -> None:
        """The epoch augmentation draws for. DataLoader workers get a copy of the dataset
        when iteration starts (they are not persistent), so set it before each epoch."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        utt = self.utterances[index]
        item: dict = {"index": index, "utterance_id": utt.utterance_id}
        try:
            audio = load_audio(utt.audio, start=utt.start, end=utt.end)
        except AudioError as err:
            return {**item, "error": str(err), "reason": err.reason}
        item["duration"] = len(audio) / SAMPLE_RATE
        if self.tokenizer is not None and utt.text is not None:
            problem = self._training_problem(utt, audio, item["duration"])
            if problem:
                return {**item, "reason": problem[0], "error": problem[1]}
            labels = encode_labels(self.tokenizer, self.special, utt.text)
            if len(labels) > self.max_label_tokens:
                message = (
                    f"{utt.audio}: label has {len(labels)} tokens, more than the decoder's "
                    f"{self.max_label_tokens}"
                )
                return {**item, "reason": LABEL_TOO_LONG, "error": message}
            item["labels"] = labels
        augmenter = None
        if self.augmenter is not None and "labels" in item:
            augmenter = self.augmenter.for_source(utt.source)  # data.source_augment's block
        if augmenter:
            audio, _ = augmenter.waveform(audio, self.epoch, index)
            # Speed changes the length: throughput counts and the encoder's frames follow.
            item["duration"] = len(audio) / SAMPLE_RATE
        frames = clip_frames(self.context, len(audio))
        if augmenter:
            item["input_features"], _ = augmenter.features(
                audio, self.n_mels, frames, self.epoch, index
            )
        else:
            item["input_features"] = log_mel(audio, self.n_mels, frames)
        return item

    def _training_problem(
        self, utt: Utterance, audio: np.ndarray, seconds: float
    ) -> tuple[str, str] | None:
        """(reason, message) when a clip cannot teach its label, else None."""
        reason = duration_problem(seconds, *self.seconds_range)
        if reason:
            return reason, duration_message(str(utt.audio), seconds, *self.seconds_range)
        peak = float(np.abs(audio).max())
        if peak < SILENCE_PEAK:
            return SILENT, f"{utt.audio}: is silent (peak {peak:.1e}) but has text {utt.text!r}"
        return None


@dataclass
class WhisperCollator:
    """Stacks features and pads label sequences for teacher forcing.

    Each full sequence is ``<|startoftranscript|> [lang task] <|notimestamps|> text <|eot|>``.
    `decoder_input_ids` is the sequence without its last token; `labels` the sequence without
    its first (the start token is only ever an input, so it can never appear twice), with
    padding set to -100 so the loss skips it. Padding is on the right, so the decoder's causal
    mask already keeps real tokens from attending to it. Whisper's encoder takes no mask: it
    sees silence after the audio, as in its 30 s training window, so clips computed to fewer
    frames than the batch's widest are padded with their own silence value.
    """

    special: SpecialTokens

    def __call__(self, items: list[dict]) -> dict:
        good = [item for item in items if "error" not in item]
        batch: dict = {
            "utterance_ids": [item["utterance_id"] for item in good],
            "indices": [item["index"] for item in good],
            "errors": [(item["utterance_id"], item["error"]) for item in items if "error" in item],
            "error_reasons": [item["reason"] for item in items if "error" in item],
        }
        if not good:
            return batch
        batch["input_features"] = _stack_features([item["input_features"] for item in good])
        batch["durations"] = [item["duration"] for item in good]
        if "labels" in good[0]:
            batch.update(self._pad([item["labels"] for item in good]))
        return batch

    def _pad(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(seq) for seq in sequences) - 1
        inputs = torch.full((len(sequences), width), self.special.eot, dtype=torch.long)
        labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
        for row, seq in enumerate(sequences):
            if seq[0] != self.special.sot:
                raise ValueError(f"label sequence does not start with the start token: {seq[:4]}")
            inputs[row, : len(seq) - 1] = torch.tensor(seq[:-1])
            labels[row, : len(seq) - 1] = torch.tensor(seq[1:])
        return {"decoder_input_ids": inputs, "labels": labels}


def _stack_features(features: list[np.ndarray]) -> torch.Tensor:
    """(batch, mels, frames) with `frames` the widest clip's; narrower clips are padded
    with the value their zero padding has (see `pad_frames`)."""
    width = max(f.shape[-1] for f in features)
    return torch.stack([pad_frames(torch.from_numpy(f), width) for f in features])


def pad_frames(features: torch.Tensor, frames: int) -> torch.Tensor:
    """Log-mel `features` (..., mels, width) padded on the right to `frames`, each clip with
    the value its zero padding has (its maximum less audio.log_mel's floor): what computing
    the clip in a window of `frames` would give."""
    extra = frames - features.shape[-1]
    if extra <= 0:
        return features
    floor = features.amax(dim=(-2, -1), keepdim=True) - SILENCE_BELOW_MAX
    return torch.cat([features, floor.expand(*features.shape[:-1], extra)], dim=-1)


def split_batch(batch: dict, parts: int) -> list[dict]:
    """A collated batch cut into up to `parts` consecutive pieces along the clip axis."""
    n = len(batch["utterance_ids"])
    size = -(-n // max(1, parts))
    pieces = []
    for start in range(0, n, size):
        piece = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) or key in ("utterance_ids", "indices", "durations"):
                piece[key] = value[start : start + size]
            else:
                piece[key] = value if start == 0 else []  # per-batch lists (errors) once
        pieces.append(piece)
    return pieces


def load_utterances(
    paths: list[str], limit: int | None, problems: DataProblems | None = None
) -> list[Utterance]:
    """The manifests' entries in order, each marked with the index of its manifest."""
    utterances = [
        replace(u, source=i) if i else u
        for i, p in enumerate(paths)
        for u in read_manifest(resolve_path(p), problems=problems)
    ]
    return utterances[:limit] if limit else utterances
