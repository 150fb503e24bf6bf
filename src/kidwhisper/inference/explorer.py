"""A self-contained HTML error explorer: `kidwhisper score --html` and `compare --html`.

Python builds one JSON payload (every utterance with its word alignment, the WER breakdowns,
the top errors) and writes it into `explorer_template.html`, whose plain JavaScript draws
the charts, filters, sorts and renders the rows a page at a time (so 10,000 rows stay
responsive). The page needs no server and no network: audio is referenced by a path relative
to the page's folder, or embedded as data URIs (`embed_audio`) so the file can be shared.

The alignment is `analysis.align`'s and every WER is `scoring.score`'s: the page shows the
normalised texts the metric compares.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from kidwhisper.files import atomic_write_text
from kidwhisper.inference.analysis import (
    Analysis,
    Reference,
    UtteranceScore,
    align,
    length_bin,
    read_references,
    top,
)
from kidwhisper.inference.comparison import Comparison
from kidwhisper.inference.scoring import WerReport

log = logging.getLogger(__name__)

TEMPLATE = "explorer_template.html"
PAYLOAD_MARK = "/*__KIDWHISPER_PAYLOAD__*/"
TITLE_MARK = "__KIDWHISPER_TITLE__"
AUDIO_TYPES = {
    ".flac": "audio/flac", ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
    ".opus": "audio/ogg", ".m4a": "audio/mp4", ".webm": "audio/webm",
}  # fmt: skip
# Characters that could end the <script> element or open a comment/CDATA inside it.
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


# ---------------------------------------------------------------------------- pieces


def word_ops(chunks: list) -> list[list[str]]:
    """`analysis.align` chunks as display ops: `["=", words]` for a run of matches, then one
    op per word: `["~", ref, hyp]` substituted, `["+", hyp]` inserted, `["-", ref]` deleted."""
    ops: list[list[str]] = []
    for kind, ref, hyp in chunks:
        if kind == "equal":
            ops.append(["=", " ".join(ref)])
        elif kind == "substitute":
            ops += [["~", r, h] for r, h in zip(ref, hyp, strict=True)]
        elif kind == "insert":
            ops += [["+", w] for w in hyp]
        else:
            ops += [["-", w] for w in ref]
    return ops


def _rate(value: float | None) -> float | None:
    # JSON has no NaN (JSON.parse rejects it): no rate is null.
    return None if value is None or math.isnan(value) else round(value, 6)


def _report(label: str, r: WerReport) -> dict:
    return {
        "label": label, "wer": _rate(r.wer), "utterances": r.utterances,
        "words": r.reference_words, "sub": r.substitutions, "del": r.deletions,
        "ins": r.insertions,
    }  # fmt: skip


def _breakdowns(result: Analysis) -> dict:
    return {
        "overall": _report("all", result.overall),
        "by_age": [_report(k, r) for k, r in result.by_age.items()],
        "by_length": [_report(k, r) for k, r in result.by_length.items()],
    }


def _scored(u: UtteranceScore) -> dict:
    """One system's side of a row: normalised hypothesis, ops and error counts."""
    _, chunks = align(u.utterance_id, u.reference, u.hypothesis, u.missing)
    return {
        "hyp": u.hypothesis, "ops": word_ops(chunks), "wer": _rate(u.wer), "err": u.errors,
        "sub": u.substitutions, "del": u.deletions, "ins": u.insertions, "missing": u.missing,
    }  # fmt: skip


def _meta(ref: Reference, u: UtteranceScore, audio: str | None) -> dict:
    return {
        "id": ref.utterance_id, "ref": u.reference, "words": u.reference_words,
        "age": ref.age_bucket or "unknown", "dur": ref.duration, "len": length_bin(ref.duration),
        "audio": audio,
    }  # fmt: skip


# ---------------------------------------------------------------------------- audio


def audio_paths(reference: str | Path) -> dict[str, Path]:
    """Each reference utterance's clip (`audio_path`, relative to the manifest), where given."""
    reference = Path(reference)
    paths = {}
    for line in reference.read_text(encoding="utf-8").splitlines():
        row = json.loads(line) if line.strip() else {}
        if isinstance(row.get("audio_path"), str):
            paths[row["utterance_id"]] = reference.parent / row["audio_path"]
    return paths


def audio_source(clip: Path | None, page_dir: Path, embed: bool = False) -> str | None:
    """What an <audio> element on a page in `page_dir` plays for `clip`: its path relative to
    the page (URL-quoted), or with `embed` the file itself as a base64 data URI."""
    if clip is None:
        return None
    if embed:
        if not clip.is_file():
            log.warning("%s: no such audio file; its row has no player", clip)
            return None
        mime = AUDIO_TYPES.get(clip.suffix.lower(), "application/octet-stream")
        return f"data:{mime};base64,{base64.b64encode(clip.read_bytes()).decode('ascii')}"
    try:
        relative = os.path.relpath(clip.resolve(), page_dir.resolve())
    except ValueError:  # another drive (Windows): no relative path exists
        return clip.resolve().as_uri()
    return quote(Path(relative).as_posix())


def _sources(refs: list[Reference], reference: Path, out: Path, embed: bool) -> dict:
    """Audio source per utterance id of `refs`, for a page at `out`."""
    clips = audio_paths(reference)
    page = out.parent
    return {r.utterance_id: audio_source(clips.get(r.utterance_id), page, embed) for r in refs}


# ---------------------------------------------------------------------------- payloads


def score_payload(
    result: Analysis, refs: list[Reference], audio: dict[str, str | None], top_n: int = 20
) -> dict:
    """Everything the score page shows, as JSON-ready data (rows in reference order);
    `audio` maps utterance ids to audio sources."""
    rows = [
        {**_meta(ref, u, audio.get(ref.utterance_id)), **_scored(u)}
        for ref, u in zip(refs, result.utterances, strict=True)
    ]
    return {
        "kind": "score",
        **_breakdowns(result),
        "top": {
            "sub": [[r, h, c] for (r, h), c in top(result.substitutions, top_n)],
            "ins": [[w, c] for w, c in top(result.insertions, top_n)],
            "del": [[w, c] for w, c in top(result.deletions, top_n)],
        },
        "missing": len(result.missing_ids),
        "unknown": len(result.unknown_ids),
        "rows": rows,
    }


def compare_payload(comparison: Comparison, audio: dict[str, str | None]) -> dict:
    """Everything the compare page shows: both systems' breakdowns and the differing rows;
    `audio` maps utterance ids to audio sources."""
    rows = [
        {
            **_meta(d.reference, d.a, audio.get(d.reference.utterance_id)),
            "a": _scored(d.a),
            "b": _scored(d.b),
            "verdict": d.verdict,
            "delta": d.delta,
        }
        for d in comparison.differences()
    ]
    systems = [
        {"name": name, **_breakdowns(r)}
        for name, r in zip(comparison.names, (comparison.a, comparison.b), strict=True)
    ]
    return {"kind": "compare", "systems": systems, "counts": comparison.counts(), "rows": rows}


# ---------------------------------------------------------------------------- the page


def script_json(payload: dict) -> str:
    """`payload` as JSON that cannot end the <script> element it sits in (no `<`, `>`, `&`)."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escape in _SCRIPT_ESCAPES.items():
        text = text.replace(char, escape)
    return text


def render_page(payload: dict, title: str) -> str:
    """The template with `payload` and `title` filled in."""
    template = resources.files("kidwhisper.inference").joinpath(TEMPLATE).read_text("utf-8")
    page = template.replace(TITLE_MARK, html.escape(title))
    return page.replace(PAYLOAD_MARK, script_json(payload), 1)


def write_page(payload: dict, title: str, out: str | Path) -> Path:
    """Write the page atomically (a temp file beside `out`, then renamed)."""
    return atomic_write_text(out, render_page(payload, title))


def write_score_html(
    result: Analysis,
    reference: str | Path,
    out: str | Path,
    embed_audio: bool = False,
    sources: tuple[str, str] | None = None,
    top_n: int = 20,
) -> Path:
    """The score explorer for `result` (scored against `reference`) at `out`."""
    out, reference = Path(out), Path(reference)
    refs = read_references(reference)
    payload = score_payload(result, refs, _sources(refs, reference, out, embed_audio), top_n)
    payload["sources"] = list(sources or ("predictions", str(reference)))
    return write_page(payload, f"WER explorer: {payload['sources'][0]}", out)


def write_compare_html(
    comparison: Comparison,
    reference: str | Path,
    out: str | Path,
    embed_audio: bool = False,
    sources: tuple[str, str, str] | None = None,
) -> Path:
    """The side-by-side page of `comparison` (scored against `reference`) at `out`."""
    out, reference = Path(out), Path(reference)
    differing = [d.reference for d in comparison.differences()]  # only their audio is used
    payload = compare_payload(comparison, _sources(differing, reference, out, embed_audio))
    payload["sources"] = list(sources or (*comparison.names, str(reference)))
    name_a, name_b = comparison.names
    return write_page(payload, f"Compare: {name_a} vs {name_b}", out)
