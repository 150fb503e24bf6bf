"""Curating manifests: `kidwhisper filter` and `kidwhisper split`.

`filter` decodes a manifest with a reference model (greedy, as `kidwhisper evaluate` does)
and drops the utterances whose WER, under the competition's normaliser, is above a
threshold: a transcript far from what a decent model hears is more often a wrong or
misaligned label than a hard clip (children's ASR work filters its training data so).
Every dropped entry is counted under its reason and listed with its WER, reference and
hypothesis; an utterance whose reference has no words once normalised has no WER and is
kept, listed as not judged.

`split` makes a speaker-disjoint train/dev split stratified by age bucket: each speaker
(`child_id`; an entry without one is a speaker of its own, since nothing says whom it
shares a voice with) goes wholly to one side; within each age bucket (a speaker's most
frequent one), round(fraction x speakers) speakers go to dev, at least one and at most
all but one where the bucket has two or more. The choice is a seeded shuffle per bucket,
so it depends on the seed and the bucket's speakers alone.

Both write manifest lines as they were, with `audio_path` rewritten so it still points at
the same file from the new manifest's folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kidwhisper.data.dataset import Utterance, read_manifest
from kidwhisper.data.problems import HIGH_WER, UNDECODABLE, DataProblems
from kidwhisper.data.weighting import bucket
from kidwhisper.errors import UserError
from kidwhisper.files import atomic_open, atomic_write_text

if TYPE_CHECKING:
    from kidwhisper.inference.decoding import DecodingOptions
    from kidwhisper.models.factory import WhisperModel

log = logging.getLogger(__name__)


class CurationError(UserError, ValueError):
    """A filter or split that cannot be done as asked; the message says why."""


# --- manifest lines ------------------------------------------------------------------------


def read_rows(
    path: str | Path, problems: DataProblems, require_text: bool = True
) -> list[tuple[Utterance, dict]]:
    """The manifest's usable entries, each with its line as written. Bad lines stop it with
    one error listing them all (read_manifest); with `require_text`, empty texts go to
    `problems`, as in training."""
    utterances = read_manifest(path, require_text, problems, strict=True)
    rows: dict[str, dict] = {}
    with open(path, "rb") as lines:
        for raw in lines:
            try:
                row = json.loads(raw)
            except ValueError:  # reported by read_manifest
                continue
            if isinstance(row, dict) and isinstance(row.get("utterance_id"), str):
                rows.setdefault(row["utterance_id"], row)  # the first of repeated ids
    return [(u, rows[u.utterance_id]) for u in utterances]


def rebased(row: dict, source_dir: Path, target_dir: Path) -> dict:
    """The row with a relative `audio_path` rewritten from `source_dir` to `target_dir`."""
    audio = Path(row["audio_path"])
    if audio.is_absolute():
        return row
    moved = os.path.relpath(os.path.abspath(source_dir / audio), os.path.abspath(target_dir))
    return {**row, "audio_path": Path(moved).as_posix()}


def check_outputs(outputs: list[Path], inputs: list[Path], force: bool) -> None:
    """Refuse to write over an input, or over existing files without `force`."""
    for out in outputs:
        if any(out.exists() and out.resolve() == Path(i).resolve() for i in inputs):
            raise CurationError(f"{out}: is the input manifest; write somewhere else")
        if out.exists() and not force:
            raise FileExistsError(f"{out}: exists (--force replaces it)")


def write_rows(path: Path, rows: list[dict]) -> Path:
    with atomic_open(path) as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# --- filter --------------------------------------------------------------------------------


@dataclass
class FilterReport:
    manifest: str
    out: str
    report: str
    max_wer: float
    read: int  # usable entries read from the manifest
    kept: int
    problems: DataProblems
    not_judged: list[str] = field(default_factory=list)  # no reference words: kept

    def summary_lines(self) -> list[str]:
        lines = [
            f"kept {self.kept} of {self.read} utterances of {self.manifest} "
            f"(WER <= {self.max_wer:g}): {self.out}",
            f"dropped: {self.problems.summary().removeprefix('skipped ')}",
        ]
        if self.not_judged:
            lines.append(
                f"kept without a WER: {len(self.not_judged)} (no reference words once normalised)"
            )
        return [*lines, f"report (every dropped entry, WER, reference, hypothesis): {self.report}"]


def filter_by_wer(
    wm: WhisperModel,
    manifest: str | Path,
    out: str | Path,
    max_wer: float,
    report: str | Path | None = None,
    batch_size: int = 16,
    options: DecodingOptions | None = None,
    force: bool = False,
    progress: bool = True,
) -> FilterReport:
    """Keep the entries of `manifest` that `wm` transcribes with WER <= `max_wer`; write them
    to `out` and a JSON report of the rest (default: `out` with `.report.json`)."""
    from kidwhisper.inference.evaluation import transcribe
    from kidwhisper.inference.scoring import utterance_wer

    manifest, out = Path(manifest), Path(out)
    report = check_filter(manifest, out, report, max_wer, force)
    problems = DataProblems("skip")
    pairs = read_rows(manifest, problems)
    texts, errors = transcribe(wm, [u for u, _ in pairs], batch_size, options, progress=progress)
    failed = dict(errors)
    kept, not_judged, details = [], [], {}
    for utt, row in pairs:
        uid, hypothesis = utt.utterance_id, texts.get(utt.utterance_id, "")
        where = f"{utt.audio} (utterance {uid})"
        if uid in failed:
            problems.add(uid, UNDECODABLE, f"{where}: {failed[uid]}")
            details[uid] = {"reference": utt.text}
            continue
        wer = utterance_wer(utt.text, hypothesis)
        if math.isnan(wer):
            not_judged.append(uid)
        elif wer > max_wer:
            message = f"{where}: WER {wer:.3f} > {max_wer:g}: {utt.text!r} heard as {hypothesis!r}"
            problems.add(uid, HIGH_WER, message)
            details[uid] = {"wer": round(wer, 4), "reference": utt.text, "hypothesis": hypothesis}
            continue
        kept.append(rebased(row, manifest.parent, out.parent))
    write_rows(out, kept)
    result = FilterReport(
        str(manifest), str(out), str(report), max_wer, len(pairs), len(kept), problems, not_judged
    )
    _write_report(result, details)
    log.info("filter: %s", problems.summary())
    return result


def check_filter(
    manifest: Path, out: Path, report: str | Path | None, max_wer: float, force: bool
) -> Path:
    """The report's path, once the threshold, the outputs and every line of the manifest
    are known to be fine (before a model loads)."""
    report = Path(report) if report else out.with_suffix(".report.json")
    if not max_wer >= 0:
        raise CurationError(f"--max-wer must be >= 0, got {max_wer}")
    check_outputs([out, report], [manifest], force)
    read_manifest(manifest, strict=True)  # all bad lines in one error
    return report


def _write_report(result: FilterReport, details: dict[str, dict]) -> None:
    dropped = [
        {"id": key, "reason": reason, **details.get(key, {}), "message": message}
        for key, (reason, message) in result.problems.entries.items()
    ]
    body = {
        "manifest": result.manifest,
        "max_wer": result.max_wer,
        "read": result.read,
        "kept": result.kept,
        "dropped_by_reason": result.problems.counts(),
        "not_judged": result.not_judged,
        "dropped": dropped,
    }
    atomic_write_text(result.report, json.dumps(body, indent=1, ensure_ascii=False) + "\n")


# --- split ---------------------------------------------------------------------------------


@dataclass
class SplitReport:
    manifest: str
    out_dir: str
    dev_fraction: float
    seed: int
    # bucket -> {"train"/"dev": [speakers, utterances, seconds]}, by each speaker's bucket
    counts: dict[str, dict[str, list[float]]]
    problems: DataProblems

    def summary_lines(self) -> list[str]:
        lines = [
            f"split {self.manifest} into {self.out_dir}/train.jsonl and dev.jsonl "
            f"(dev fraction {self.dev_fraction:g} of each bucket's speakers, seed {self.seed})",
            f"{'age bucket':<12}{'speakers train/dev':>20}{'utterances train/dev':>22}"
            f"{'hours train/dev':>18}",
        ]
        total = {part: [0.0, 0.0, 0.0] for part in ("train", "dev")}
        for name, parts in [*self.counts.items(), ("all", total)]:
            if name != "all":
                for part in total:
                    total[part] = [a + b for a, b in zip(total[part], parts[part], strict=True)]
            (ts, tu, th), (ds, du, dh) = parts["train"], parts["dev"]
            lines.append(
                f"{name:<12}{f'{ts:.0f} / {ds:.0f}':>20}{f'{tu:.0f} / {du:.0f}':>22}"
                f"{f'{th / 3600:.2f} / {dh / 3600:.2f}':>18}"
            )
        if self.problems:
            lines.append(f"left out: {self.problems.summary().removeprefix('skipped ')}")
        return lines


def speaker(utterance: Utterance) -> str:
    """The speaker key: child_id, else the entry itself (a speaker of its own)."""
    return f"child {utterance.speaker}" if utterance.speaker else f"entry {utterance.utterance_id}"


def dev_speakers(speakers: list[str], fraction: float, seed: int, salt: str = "") -> set[str]:
    """round(fraction x n) of `speakers` (at least 1 and at most n - 1 when n >= 2), chosen
    by a shuffle seeded with `seed` and `salt` (the bucket) alone."""
    n = len(speakers)
    count = min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0
    order = sorted(speakers)
    random.Random(f"{seed}:{salt}").shuffle(order)
    return set(order[:count])


def _bucket_order(name: str) -> tuple[float, str]:
    """Buckets by their first number ("5-7" before "12+"), the rest by name after them."""
    digits = re.match(r"\d+", name)
    return (int(digits.group()) if digits else math.inf, name)


def split_manifest(
    manifest: str | Path,
    out_dir: str | Path,
    dev_fraction: float = 0.1,
    seed: int = 0,
    force: bool = False,
) -> SplitReport:
    """Write `out_dir`/train.jsonl and dev.jsonl: speaker-disjoint, stratified by age."""
    manifest, out_dir = Path(manifest), Path(out_dir)
    if not 0 < dev_fraction < 1:
        raise CurationError(f"--dev-fraction must be between 0 and 1, got {dev_fraction}")
    outputs = {part: out_dir / f"{part}.jsonl" for part in ("train", "dev")}
    check_outputs(list(outputs.values()), [manifest], force)
    problems = DataProblems("skip")
    pairs = read_rows(manifest, problems, require_text=False)
    if not pairs:
        raise CurationError(f"{manifest}: no usable entries ({problems.summary()})")
    buckets_of: dict[str, Counter[str]] = defaultdict(Counter)
    for utt, _ in pairs:
        buckets_of[speaker(utt)][bucket(utt)] += 1
    # A speaker's bucket: the one most of its entries have (ties: the first by name).
    home = {s: min(c, key=lambda b: (-c[b], b)) for s, c in buckets_of.items()}
    by_bucket: dict[str, list[str]] = defaultdict(list)
    for s, b in home.items():
        by_bucket[b].append(s)
    dev = set().union(*(dev_speakers(s, dev_fraction, seed, b) for b, s in by_bucket.items()))
    rows: dict[str, list[dict]] = {"train": [], "dev": []}
    buckets = sorted(by_bucket, key=_bucket_order)
    counts = {b: {"train": [0.0, 0.0, 0.0], "dev": [0.0, 0.0, 0.0]} for b in buckets}
    for s, b in home.items():
        counts[b]["dev" if s in dev else "train"][0] += 1
    for utt, row in pairs:
        part = "dev" if speaker(utt) in dev else "train"
        rows[part].append(rebased(row, manifest.parent, out_dir))
        counts[home[speaker(utt)]][part][1] += 1
        counts[home[speaker(utt)]][part][2] += utt.duration or 0.0
    for part, path in outputs.items():
        write_rows(path, rows[part])
    log.info("split: %d train and %d dev entries", len(rows["train"]), len(rows["dev"]))
    return SplitReport(str(manifest), str(out_dir), dev_fraction, seed, counts, problems)
