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
from kidwhisper.files import atomic_open, atomic_write_text
from kidwhisper.inference.scoring import WerReport, percent, score

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


def summary_lines(result: Analysis, n: int = 10) -> list[str]:
    """The plain-text summary `kidwhisper score` prints: WER, breakdowns, top errors."""
    o = result.overall
    lines = [
        f"WER {percent(o.wer)} on {o.utterances} utterances ({o.reference_words} reference words: "
        f"{o.substitutions} substitutions, {o.deletions} deletions, {o.insertions} insertions)"
    ]
    for name, groups in (("age", result.by_age), ("length", result.by_length)):
        lines += [
            f"  {name} {k}: {percent(r.wer)} ({r.utterances} utterances)" for k, r in groups.items()
        ]
    if result.missing_ids:
        lines.append(
            f"{len(result.missing_ids)} reference utterance(s) had no prediction and were scored "
            f"as empty: {id_list(result.missing_ids, n)}"
        )
    lines.append("top substitutions (reference -> prediction):")
    lines += [f"  {c:4d}  {r} -> {h}" for (r, h), c in top(result.substitutions, n)] or ["  none"]
    for name, counter in (("insertions", result.insertions), ("deletions", result.deletions)):
        lines.append(f"top {name}:")
        lines += [f"  {count:4d}  {word}" for word, count in top(counter, n)] or ["  none"]
    lines.append("worst utterances:")
    for u in result.worst(n):
        plural = "" if u.errors == 1 else "s"
        lines.append(f"  {_label(u)}: {u.errors} error{plural}, WER {percent(u.wer)}")
        lines += [f"    ref: {_shown(u.reference)}", f"    hyp: {_shown(u.hypothesis)}"]
    return lines


def _label(u: UtteranceScore) -> str:
    return u.utterance_id + (" (no prediction)" if u.missing else "")


def _shown(text: str) -> str:
    return text or "(empty)"


def _table(header: list[str], rows: list[list]) -> list[str]:
    def cells(values: list) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    if not rows:
        return ["None."]
    return [cells(header), "|" + "---|" * len(header)] + [cells(row) for row in rows]


def _group_table(title: str, groups: dict[str, WerReport]) -> list[str]:
    header = [title, "utterances", "reference words", "WER", "subs", "dels", "ins"]
    rows = [
        [
            k,
            r.utterances,
            r.reference_words,
            percent(r.wer),
            r.substitutions,
            r.deletions,
            r.insertions,
        ]
        for k, r in groups.items()
    ]
    return _table(header, rows)


def write_chart(result: Analysis, path: str | Path) -> Path | None:
    """Bar charts of WER by age bucket and by clip length (PNG); None when neither is known."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [
        (t, g) for t, g in (("age bucket", result.by_age), ("clip length", result.by_length)) if g
    ]
    if not panels:
        return None
    fig = Figure(figsize=(5 * len(panels), 4), layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg, whatever pyplot's backend is
    for ax, (title, groups) in zip(
        fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        values = [0.0 if math.isnan(r.wer) else 100 * r.wer for r in groups.values()]
        # numeric positions: string categories like "5-7" would be parsed as dates
        bars = ax.bar(range(len(values)), values, tick_label=list(groups), color="tab:blue")
        ax.bar_label(
            bars, [f"{percent(r.wer)}\nn={r.utterances}" for r in groups.values()], fontsize=8
        )
        ax.axhline(100 * result.overall.wer, color="tab:red", linestyle="--", label="overall")
        ax.set(title=f"WER by {title}", xlabel=title, ylabel="WER (%)")
        ax.set_ylim(0, max([*values, 100 * result.overall.wer]) * 1.25 + 1)
        ax.legend(loc="upper right")
    path = Path(path)
    with atomic_open(path, "wb") as out:
        fig.savefig(out, dpi=120, format="png")
    return path


def write_report(
    result: Analysis, path: str | Path, n: int = 10, sources: tuple[str, str] | None = None
) -> tuple[Path, Path | None]:
    """Write a Markdown report and, beside it, the chart `<stem>_wer.png`; return both paths.

    `sources` (predictions file, reference file) are named at the top of the report.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chart = write_chart(result, path.with_name(f"{path.stem}_wer.png"))
    md = ["# WER report", ""]
    if sources:
        md += [f"Predictions: `{sources[0]}`  ", f"Reference: `{sources[1]}`", ""]
    md += _overview_md(result, n)
    if chart:
        md += [f"![WER by age bucket and clip length]({chart.name})", ""]
    md += _errors_md(result, n)
    atomic_write_text(path, "\n".join(md) + "\n")
    return path, chart


def _overview_md(result: Analysis, n: int) -> list[str]:
    o = result.overall
    md = _table(
        ["WER", "utterances", "reference words", "substitutions", "deletions", "insertions"],
        [
            [
                percent(o.wer),
                o.utterances,
                o.reference_words,
                o.substitutions,
                o.deletions,
                o.insertions,
            ]
        ],
    )
    md += ["", "Texts are compared after the competition normaliser, as the metric does.", ""]
    notes = (
        (result.missing_ids, "{} reference utterance(s) had no prediction** and scored as empty"),
        (result.unknown_ids, "Error: {} prediction id(s) not in the reference** were not scored"),
    )
    for ids, what in notes:
        md += [f"**{what.format(len(ids))}: {id_list(ids, n)}", ""] if ids else []
    if result.by_age:
        md += ["## WER by age bucket", "", *_group_table("age bucket", result.by_age), ""]
    if result.by_length:
        md += ["## WER by clip length", "", *_group_table("clip length", result.by_length), ""]
    return md


def _errors_md(result: Analysis, n: int) -> list[str]:
    subs = [[c, r, h] for (r, h), c in top(result.substitutions, n)]
    md = ["## Top substitutions", "", *_table(["count", "reference", "prediction"], subs), ""]
    for name, counter in (("insertions", result.insertions), ("deletions", result.deletions)):
        rows = [[c, w] for w, c in top(counter, n)]
        md += [f"## Top {name}", "", *_table(["count", "word"], rows), ""]
    worst = [
        [_label(u), u.errors, percent(u.wer), _shown(u.reference), _shown(u.hypothesis)]
        for u in result.worst(n)
    ]
    md += ["## Worst utterances", ""]
    return md + _table(["utterance", "errors", "WER", "reference", "prediction"], worst)
