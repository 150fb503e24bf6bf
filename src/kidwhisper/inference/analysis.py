"""Error analysis of a predictions jsonl against a reference jsonl, with the competition's WER.

Both files have `utterance_id` and `orthographic_text` per line; the reference may also carry
`age_bucket` and `audio_duration_sec`. The reference decides what is scored: an utterance with
no prediction is scored as empty (listed in `missing_ids`); a prediction id not in the reference
is not scored (listed in `unknown_ids`, for the caller to report as an error).

Every WER comes from `scoring.score`; which words were substituted, inserted or deleted comes
from jiwer's alignment of the `scoring.normalize`d texts. A reference that normalises to nothing
("um") is handled as `scoring` documents: no reference words, every hypothesis word an insertion.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jiwer

from kidwhisper.data.text import normalize
from kidwhisper.errors import UserError
from kidwhisper.inference.scoring import WerReport, score

# Clip-length bins: (label, upper bound in seconds, exclusive), in display order.
LENGTH_BINS: tuple[tuple[str, float], ...] = (
    ("<2 s", 2.0), ("2-5 s", 5.0), ("5-10 s", 10.0), ("10-20 s", 20.0), (">=20 s", math.inf),
)  # fmt: skip
UNKNOWN = "unknown"


class ScoreInputError(UserError, ValueError):
    """A predictions or reference file that cannot be scored; the message names file and line."""


@dataclass(frozen=True)
class Reference:
    utterance_id: str
    text: str
    age_bucket: str | None = None
    duration: float | None = None


@dataclass(frozen=True)
class UtteranceScore:
    """One utterance's normalised texts and error counts."""

    utterance_id: str
    reference: str
    hypothesis: str
    substitutions: int
    deletions: int
    insertions: int
    missing: bool = False  # no prediction in the file: scored as empty

    @property
    def reference_words(self) -> int:
        return len(self.reference.split())

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Errors per reference word; NaN when the reference normalises to nothing."""
        return self.errors / self.reference_words if self.reference_words else math.nan


@dataclass
class Analysis:
    """Corpus WER, its breakdowns and the word-level errors behind it."""

    overall: WerReport
    by_age: dict[str, WerReport]
    by_length: dict[str, WerReport]
    utterances: list[UtteranceScore]
    substitutions: Counter[tuple[str, str]] = field(default_factory=Counter)
    insertions: Counter[str] = field(default_factory=Counter)
    deletions: Counter[str] = field(default_factory=Counter)
    missing_ids: list[str] = field(default_factory=list)
    unknown_ids: list[str] = field(default_factory=list)

    def worst(self, n: int) -> list[UtteranceScore]:
        """The `n` utterances with the most errors (ties: higher WER, NaN highest, then id)."""

        def key(u: UtteranceScore) -> tuple:
            return (-u.errors, -(math.inf if math.isnan(u.wer) else u.wer), u.utterance_id)

        return sorted((u for u in self.utterances if u.errors), key=key)[:n]


def top(counter: Counter, n: int) -> list[tuple]:
    """The `n` most frequent entries, ties broken alphabetically so output is deterministic."""
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:n]


# ---------------------------------------------------------------------------- reading


def _rows(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (`file:line`, object) for each non-blank line, with `utterance_id` checked unique."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ScoreInputError(f"{path}: not UTF-8 text ({err.reason})") from err
    seen: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ScoreInputError(f"{where}: not valid JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise ScoreInputError(f"{where}: expected a JSON object")
        missing = [
            k for k in ("utterance_id", "orthographic_text") if not isinstance(row.get(k), str)
        ]
        if missing:
            raise ScoreInputError(f"{where}: missing or non-string field(s) {missing}")
        uid = row["utterance_id"]
        if uid in seen:
            raise ScoreInputError(
                f"{where}: duplicate utterance_id {uid} (first at line {seen[uid]})"
            )
        seen[uid] = number
        yield where, row


def read_predictions(path: str | Path) -> dict[str, str]:
    """Predicted text keyed by utterance id (extra fields such as `reference` are ignored)."""
    return {row["utterance_id"]: row["orthographic_text"] for _, row in _rows(Path(path))}


def _seconds(value: object) -> bool:
    return isinstance(value, int | float) and not math.isnan(value) and value >= 0


def read_references(path: str | Path) -> list[Reference]:
    """References in file order, with age bucket and duration when the file has them."""
    path, refs = Path(path), []
    for where, row in _rows(path):
        age, duration = row.get("age_bucket"), row.get("audio_duration_sec")
        if age is not None and not isinstance(age, str):
            raise ScoreInputError(f"{where}: age_bucket must be a string, got {age!r}")
        if duration is not None and not _seconds(duration):
            raise ScoreInputError(f"{where}: audio_duration_sec must be >= 0, got {duration!r}")
        refs.append(Reference(row["utterance_id"], row["orthographic_text"], age, duration))
    if not refs:
        raise ScoreInputError(f"{path}: no utterances")
    return refs


# ---------------------------------------------------------------------------- analysis


def length_bin(duration: float | None) -> str:
    """The clip-length bin label of a duration in seconds (`unknown` when not given)."""
    if duration is None:
        return UNKNOWN
    return next(label for label, upper in LENGTH_BINS if duration < upper)


def _age_order(label: str) -> tuple:
    # "5-7" < "8-11" < "12+" by their first number; labels without one (unknown) go last.
    match = re.match(r"\d+", label)
    return (0, int(match.group()), label) if match else (1, 0, label)


def _length_order(label: str) -> int:
    labels = [name for name, _ in LENGTH_BINS]
    return labels.index(label) if label in labels else len(labels)


def _grouped(refs: list[str], hyps: list[str], labels: list[str], order) -> dict[str, WerReport]:
    """Per-label reports from `scoring.score`, in `order`; empty when no utterance is labelled."""
    if all(label == UNKNOWN for label in labels):
        return {}
    _, groups = score(refs, hyps, groups=labels)
    return {label: groups[label] for label in sorted(groups, key=order)}


def align(utterance_id: str, ref: str, hyp: str, missing: bool) -> tuple[UtteranceScore, list]:
    """Count one normalised pair's errors; also return its (type, ref words, hyp words) chunks."""
    ref_words, hyp_words = ref.split(), hyp.split()
    if not ref_words:  # as in scoring: no reference words, every hypothesis word is inserted
        chunks = [("insert", [], hyp_words)] if hyp_words else []
    else:
        out = jiwer.process_words(" ".join(ref_words), " ".join(hyp_words))
        chunks = [
            (
                c.type,
                ref_words[c.ref_start_idx : c.ref_end_idx],
                hyp_words[c.hyp_start_idx : c.hyp_end_idx],
            )
            for c in out.alignments[0]
        ]
    count = Counter()
    for kind, r, h in chunks:
        count[kind] += max(len(r), len(h))
    result = UtteranceScore(
        utterance_id, ref, hyp, count["substitute"], count["delete"], count["insert"], missing
    )
    return result, chunks


def analyse(predictions: dict[str, str], references: list[Reference]) -> Analysis:
    """Score `predictions` against `references` and break the errors down."""
    ids = [r.utterance_id for r in references]
    missing = [uid for uid in ids if uid not in predictions]
    known = set(ids)
    unknown = [uid for uid in predictions if uid not in known]
    raw_refs = [r.text for r in references]
    raw_hyps = [predictions.get(uid, "") for uid in ids]
    try:
        overall, _ = score(raw_refs, raw_hyps)
    except ValueError as err:
        raise ScoreInputError(str(err)) from err
    ages = [r.age_bucket or UNKNOWN for r in references]
    bins = [length_bin(r.duration) for r in references]
    result = Analysis(
        overall=overall,
        by_age=_grouped(raw_refs, raw_hyps, ages, _age_order),
        by_length=_grouped(raw_refs, raw_hyps, bins, _length_order),
        utterances=[],
        missing_ids=missing,
        unknown_ids=unknown,
    )
    for uid, ref, hyp in zip(ids, raw_refs, raw_hyps, strict=True):
        scored, chunks = align(uid, normalize(ref), normalize(hyp), uid not in predictions)
        result.utterances.append(scored)
        for kind, r, h in chunks:
            if kind == "substitute":
                result.substitutions.update(zip(r, h, strict=True))
            elif kind == "insert":
                result.insertions.update(h)
            elif kind == "delete":
                result.deletions.update(r)
    return result


def analyse_files(predictions: str | Path, references: str | Path) -> Analysis:
    """`analyse` on a predictions jsonl and a reference jsonl."""
    return analyse(read_predictions(predictions), read_references(references))


# ---------------------------------------------------------------------------- output


def id_list(ids: list[str], n: int) -> str:
    """Up to `n` ids, comma-separated, and how many more there are."""
    more = f" ... and {len(ids) - n} more" if len(ids) > n else ""
    return ", ".join(ids[:n]) + more
