"""What `kidwhisper score` prints and writes: the plain-text summary, the Markdown report and
its chart, all rendered from an `analysis.Analysis`."""

from __future__ import annotations

import math
from pathlib import Path

from kidwhisper.files import atomic_open, atomic_write_text
from kidwhisper.inference.analysis import Analysis, UtteranceScore, id_list, top
from kidwhisper.inference.scoring import WerReport, percent


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
