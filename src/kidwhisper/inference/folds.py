"""Speaker cross-validation folds: `kidwhisper split --folds K`.

Eight dev speakers do not stand for fifty others: a decision needs an estimate over many
speakers. The manifests given are pooled and every speaker (`child_id`; curation.speaker)
goes wholly to one of K folds; fold i's held-out side is its own speakers, its training
side every other fold's. So no held-out speaker is ever trained on, and every speaker is
held out exactly once.

Folds are stratified by age bucket (a speaker's most frequent one): bucket by bucket, the
speakers, biggest first (ties in a seeded shuffle), each go to the fold that has the fewest
speakers of that bucket so far, then the fewest utterances in all, then the lowest number.
Every fold then has its share of each bucket's speakers (the counts differ by at most one),
utterance counts stay close, and the assignment depends only on the speakers and the seed.

Writes `fold_<i>/train.jsonl` and `fold_<i>/heldout.jsonl` (i from 1, lines as written,
audio paths rebased), and `folds.json`: who is where and the counts per fold and bucket.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from kidwhisper.data.dataset import Utterance
from kidwhisper.data.problems import DataProblems
from kidwhisper.data.weighting import bucket
from kidwhisper.files import atomic_write_text
from kidwhisper.inference.curation import (
    CurationError,
    _bucket_order,
    check_outputs,
    read_rows,
    rebased,
    speaker,
    write_rows,
)

log = logging.getLogger(__name__)

SUMMARY = "folds.json"
TRAIN, HELDOUT = "train.jsonl", "heldout.jsonl"


def fold_dir(out_dir: str | Path, fold: int) -> Path:
    """The folder of fold `fold` (numbered from 1)."""
    return Path(out_dir) / f"fold_{fold}"


def home_buckets(utterances: list[Utterance]) -> dict[str, str]:
    """Each speaker's age bucket: the one most of its entries have (ties: first by name)."""
    buckets_of: dict[str, Counter[str]] = defaultdict(Counter)
    for utt in utterances:
        buckets_of[speaker(utt)][bucket(utt)] += 1
    return {s: min(c, key=lambda b: (-c[b], b)) for s, c in buckets_of.items()}


def assign_folds(utterances: list[Utterance], k: int, seed: int = 0) -> dict[str, int]:
    """Speaker -> fold (0-based), stratified by age bucket and balanced in utterances."""
    home = home_buckets(utterances)
    if k < 2:
        raise CurationError(f"--folds must be at least 2, got {k}")
    if len(home) < k:
        raise CurationError(f"{len(home)} speaker(s) cannot fill {k} folds: use fewer folds")
    size = Counter(speaker(u) for u in utterances)
    by_bucket: dict[str, list[str]] = defaultdict(list)
    for s, b in home.items():
        by_bucket[b].append(s)
    fold_of: dict[str, int] = {}
    utterances_in = [0] * k
    for name in sorted(by_bucket, key=_bucket_order):
        speakers = sorted(by_bucket[name])
        random.Random(f"{seed}:{name}").shuffle(speakers)
        speakers.sort(key=lambda s: -size[s])  # stable: the shuffle breaks ties
        in_bucket = [0] * k
        for s in speakers:
            fold = min(range(k), key=lambda f: (in_bucket[f], utterances_in[f], f))
            fold_of[s] = fold
            in_bucket[fold] += 1
            utterances_in[fold] += size[s]
    return fold_of


@dataclass
class FoldsReport:
    manifests: list[str]
    out_dir: str
    folds: int
    seed: int
    # fold (1-based) -> bucket -> [held-out speakers, held-out utterances]
    counts: dict[int, dict[str, list[int]]]
    speakers: dict[int, list[str]]  # fold -> its held-out speakers
    problems: DataProblems = field(default_factory=lambda: DataProblems("skip"))

    def summary_lines(self) -> list[str]:
        buckets = sorted({b for c in self.counts.values() for b in c}, key=_bucket_order)
        lines = [
            f"{self.folds} speaker folds of {', '.join(self.manifests)} in {self.out_dir} "
            f"(seed {self.seed}); held-out speakers / utterances per age bucket:",
            f"{'fold':<6}" + "".join(f"{b:>14}" for b in buckets) + f"{'all':>14}",
        ]
        for fold, parts in self.counts.items():
            cells = [parts.get(b, [0, 0]) for b in buckets]
            cells.append([sum(c[0] for c in cells), sum(c[1] for c in cells)])
            lines.append(f"{fold:<6}" + "".join(f"{f'{s} / {u}':>14}" for s, u in cells))
        if self.problems:
            lines.append(f"left out: {self.problems.summary().removeprefix('skipped ')}")
        return lines

    def to_dict(self) -> dict:
        return {
            "manifests": self.manifests,
            "folds": self.folds,
            "seed": self.seed,
            "speakers": {str(f): s for f, s in self.speakers.items()},
            "counts": {str(f): c for f, c in self.counts.items()},
        }


@dataclass
class FoldsPlan:
    """Pooled entries (utterance, line as written, its manifest's folder) and their folds."""

    pairs: list[tuple[Utterance, dict, Path]]
    fold_of: dict[str, int]  # speaker -> fold, 0-based
    report: FoldsReport


def plan_folds(manifests: list[str | Path], k: int, seed: int = 0) -> FoldsPlan:
    """Pool `manifests` and split their speakers into `k` folds (nothing written)."""
    problems = DataProblems("skip")
    pairs = []
    for manifest in map(Path, manifests):
        rows = read_rows(manifest, problems, require_text=False)
        pairs += [(u, row, manifest.parent) for u, row in rows]
    ids = Counter(u.utterance_id for u, _, _ in pairs)
    repeated = sorted(i for i, n in ids.items() if n > 1)
    if repeated:
        raise CurationError(f"utterance id(s) in more than one manifest: {repeated[:5]}")
    utterances = [u for u, _, _ in pairs]
    if not utterances:
        raise CurationError(f"{manifests}: no usable entries ({problems.summary()})")
    fold_of = assign_folds(utterances, k, seed)
    home = home_buckets(utterances)
    counts: dict[int, dict[str, list[int]]] = {i: {} for i in range(1, k + 1)}
    speakers: dict[int, list[str]] = {i: [] for i in range(1, k + 1)}
    for s, fold in sorted(fold_of.items()):
        speakers[fold + 1].append(s)
        counts[fold + 1].setdefault(home[s], [0, 0])[0] += 1
    for utt in utterances:
        counts[fold_of[speaker(utt)] + 1][home[speaker(utt)]][1] += 1
    names = [str(m) for m in manifests]
    report = FoldsReport(names, "", k, seed, counts, speakers, problems)
    return FoldsPlan(pairs, fold_of, report)


def write_folds(
    manifests: list[str | Path],
    k: int,
    out_dir: str | Path,
    seed: int = 0,
    force: bool = False,
    plan: FoldsPlan | None = None,
) -> FoldsReport:
    """Pool `manifests`, split the speakers into `k` folds (or take `plan`), write each
    fold's two sides and folds.json."""
    out_dir = Path(out_dir)
    outputs = [fold_dir(out_dir, i) / name for i in range(1, k + 1) for name in (TRAIN, HELDOUT)]
    check_outputs([*outputs, out_dir / SUMMARY], [Path(m) for m in manifests], force)
    plan = plan or plan_folds(manifests, k, seed)
    for i in range(1, k + 1):
        folder = fold_dir(out_dir, i)
        sides: dict[str, list[dict]] = {TRAIN: [], HELDOUT: []}
        for utt, row, source in plan.pairs:
            side = HELDOUT if plan.fold_of[speaker(utt)] == i - 1 else TRAIN
            sides[side].append(rebased(row, source, folder))
        for name, rows in sides.items():
            write_rows(folder / name, rows)
    plan.report.out_dir = str(out_dir)
    atomic_write_text(out_dir / SUMMARY, json.dumps(plan.report.to_dict(), indent=1) + "\n")
    log.info("folds: %d speakers in %d folds under %s", len(plan.fold_of), k, out_dir)
    return plan.report
