"""The HTML explorer's data and files (no browser): payloads, escaping, audio links, compare.

The browser checks of the same pages are in tests/test_explorer_browser.py."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from kidwhisper.cli.main import main
from kidwhisper.inference.analysis import Reference, align, analyse, analyse_files
from kidwhisper.inference.comparison import compare, compare_files
from kidwhisper.inference.explorer import (
    PAYLOAD_MARK,
    audio_source,
    render_page,
    score_payload,
    script_json,
    word_ops,
    write_score_html,
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def payload_of(page: Path) -> dict:
    """The JSON inside a written page, as the browser's JSON.parse reads it."""
    text = page.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="payload">(.*?)</script>', text, re.S)
    return json.loads(found.group(1))


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    """Three references with clips (a file name with a space and a '#') in data/audio/."""
    audio = tmp_path / "data" / "audio"
    audio.mkdir(parents=True)
    rows = []
    for uid, text, age, seconds in [
        ("u1", "we call it bear", "5-7", 2.5),
        ("u2", "look at me", "8-11", 6.0),
        ("u3", "Um.", "8-11", 1.0),  # normalises to nothing: no WER, every word inserted
    ]:
        clip = audio / f"{uid} take#1.flac"
        clip.write_bytes(f"not really flac {uid}".encode())
        row = {"utterance_id": uid, "orthographic_text": text, "age_bucket": age}
        rows.append({**row, "audio_duration_sec": seconds, "audio_path": f"audio/{clip.name}"})
    return write_jsonl(tmp_path / "data" / "dev.jsonl", rows)


def test_word_ops_mark_each_error_once() -> None:
    # +now, cat~bat, -the: 3 errors; no other alignment has as few
    ref, hyp = "the cat sat on the mat", "now the bat sat on mat"
    scored, chunks = align("x", ref, hyp, False)
    ops = word_ops(chunks)
    assert [o for o in ops if o[0] != "="] == [["+", "now"], ["~", "cat", "bat"], ["-", "the"]]
    assert (scored.substitutions, scored.deletions, scored.insertions) == (1, 1, 1)
    # Reading the ops back gives both texts: nothing is lost or doubled.
    back_ref = [w for o in ops if o[0] != "+" for w in o[1].split()]
    back_hyp = [w for o in ops if o[0] != "-" for w in o[-1].split()]
    assert " ".join(back_ref) == ref and " ".join(back_hyp) == hyp


def test_score_payload_rows_match_the_analysis(manifest: Path, tmp_path: Path) -> None:
    preds = write_jsonl(tmp_path / "p.jsonl", [
        {"utterance_id": "u1", "orthographic_text": "we call it bare"},
        {"utterance_id": "u3", "orthographic_text": "hello"},
    ])  # fmt: skip
    result = analyse_files(preds, manifest)
    page = write_score_html(result, manifest, tmp_path / "out" / "r.html")
    data = payload_of(page)
    assert data["kind"] == "score" and [r["id"] for r in data["rows"]] == ["u1", "u2", "u3"]
    for row, u in zip(data["rows"], result.utterances, strict=True):
        assert (row["err"], row["sub"], row["del"], row["ins"]) == (
            u.errors, u.substitutions, u.deletions, u.insertions)  # fmt: skip
    u1, u2, u3 = data["rows"]
    assert u1["ops"] == [["=", "we call it"], ["~", "bear", "bare"]] and u1["wer"] == 0.25
    assert u2["missing"] and u2["ops"] == [["-", "look"], ["-", "at"], ["-", "me"]]
    assert u3["wer"] is None and u3["ops"] == [["+", "hello"]]  # NaN is not JSON: null
    assert data["overall"]["wer"] == pytest.approx(result.overall.wer)
    assert [g["label"] for g in data["by_age"]] == ["5-7", "8-11"]
    assert data["top"]["sub"] == [["bear", "bare", 1]] and data["missing"] == 1
    assert (u1["age"], u1["dur"], u1["len"]) == ("5-7", 2.5, "2-5 s")


def test_text_cannot_close_the_script_element() -> None:
    nasty = "</script><script>alert(1)</script><!-- & ]]>"
    text = script_json({"rows": [{"hyp": nasty}], "n": 1})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"rows": [{"hyp": nasty}], "n": 1}
    page = render_page({"rows": [{"hyp": nasty}]}, title="<b>x</b>")
    assert PAYLOAD_MARK not in page and page.count("</script>") == 2  # the template's own
    assert "<title>&lt;b&gt;x&lt;/b&gt;</title>" in page


def test_audio_is_linked_relative_to_the_page(manifest: Path, tmp_path: Path) -> None:
    result = analyse_files(write_jsonl(tmp_path / "p.jsonl", []), manifest)
    page = write_score_html(result, manifest, tmp_path / "reports" / "deep" / "r.html")
    for row in payload_of(page)["rows"]:
        assert not row["audio"].startswith(("/", "file:"))  # relative, so the folders can move
        clip = (page.parent / unquote(row["audio"])).resolve()
        assert clip == (manifest.parent / "audio" / f"{row['id']} take#1.flac").resolve()
        assert "#" not in row["audio"] and " " not in row["audio"]  # URL-quoted


def test_embedded_audio_is_the_clip_itself(manifest: Path, tmp_path: Path) -> None:
    result = analyse_files(write_jsonl(tmp_path / "p.jsonl", []), manifest)
    page = write_score_html(result, manifest, tmp_path / "r.html", embed_audio=True)
    for row in payload_of(page)["rows"]:
        head, data = row["audio"].split(",", 1)
        assert head == "data:audio/flac;base64"
        clip = manifest.parent / "audio" / f"{row['id']} take#1.flac"
        assert base64.b64decode(data) == clip.read_bytes()
    assert audio_source(None, tmp_path) is None
    assert audio_source(tmp_path / "gone.flac", tmp_path, embed=True) is None


def _refs() -> list[Reference]:
    texts = ["we call it bear", "look at me", "the cat sat", "one two three", "Hello there"]
    return [Reference(f"u{i}", t, "5-7" if i % 2 else "8-11", 1.0 + i) for i, t in enumerate(texts)]


def test_compare_lists_exactly_the_utterances_that_differ() -> None:
    a = {"u0": "we call it bare", "u1": "look at me", "u2": "the cat sat", "u3": "one too three",
         "u4": "hello there"}  # fmt: skip
    b = {"u0": "we call it bear", "u1": "look at", "u2": "The cat, sat!", "u3": "one to three",
         "u4": "hello there"}  # fmt: skip
    comparison = compare(a, b, _refs(), ("before", "after"))
    verdicts = {d.reference.utterance_id: d.verdict for d in comparison.differences()}
    # u2 differs only in case and punctuation: the metric sees the same words.
    assert verdicts == {"u0": "better", "u1": "worse", "u3": "same-wer"}
    assert comparison.counts() == {"better": 1, "worse": 1, "same-wer": 1, "identical": 2}
    deltas = {d.reference.utterance_id: d.delta for d in comparison.differences()}
    assert deltas == {"u0": -1, "u1": 1, "u3": 0}
    lines = comparison.summary_lines()
    assert lines[0].startswith("before: WER ") and lines[1].startswith("after: WER ")
    assert "3 utterances differ: 1 better in after, 1 worse, 1 with as many errors" in lines[-1]
    assert comparison.a.overall.wer == analyse(a, _refs()).overall.wer  # the one scorer


def test_compare_page_and_cli(manifest: Path, tmp_path: Path, capsys) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [
        {"utterance_id": "u1", "orthographic_text": "we call it bare"},
        {"utterance_id": "u2", "orthographic_text": "look at me"},
    ])  # fmt: skip
    b = write_jsonl(tmp_path / "b.jsonl", [
        {"utterance_id": "u1", "orthographic_text": "we call it bear"},
        {"utterance_id": "u2", "orthographic_text": "look at me"},
        {"utterance_id": "u3", "orthographic_text": "um"},
    ])  # fmt: skip
    out = tmp_path / "cmp" / "c.html"
    assert main(["compare", str(a), str(b), str(manifest), "--html", str(out)]) == 0
    data = payload_of(out)
    assert [r["id"] for r in data["rows"]] == ["u1"]  # u3: "" vs "um", both nothing normalised
    assert data["rows"][0]["verdict"] == "better" and data["rows"][0]["audio"]
    assert [s["name"] for s in data["systems"]] == ["a", "b"]
    assert "1 utterances differ: 1 better in b" in capsys.readouterr().out
    names = ["--names", "<tiny>", "tuned"]
    c2 = tmp_path / "c2.html"
    assert main(["compare", str(a), str(b), str(manifest), "--html", str(c2), *names]) == 0
    assert "<title>Compare: &lt;tiny&gt; vs tuned</title>" in c2.read_text()
    unknown = write_jsonl(tmp_path / "u.jsonl", [{"utterance_id": "zz", "orthographic_text": "x"}])
    assert main(["compare", str(a), str(unknown), str(manifest)]) == 1
    assert "were not scored: zz" in capsys.readouterr().err
    same = compare_files(a, a, manifest)
    assert same.names == (str(a), str(a)) and same.differences() == []


def test_cli_score_html(manifest: Path, tmp_path: Path, capsys) -> None:
    preds = write_jsonl(tmp_path / "p.jsonl", [{"utterance_id": "u1", "orthographic_text": "x"}])
    page = tmp_path / "r.html"
    assert main(["score", str(preds), str(manifest), "--html", str(page), "--embed-audio"]) == 0
    assert f"explorer: {page}" in capsys.readouterr().out
    data = payload_of(page)
    assert data["sources"] == [str(preds), str(manifest)]
    assert data["rows"][0]["audio"].startswith("data:audio/flac;base64,")
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file, renamed


def test_score_payload_needs_no_audio() -> None:
    refs = _refs()
    result = analyse({"u0": "we call it bear"}, refs)
    data = score_payload(result, refs, {})
    assert [r["audio"] for r in data["rows"]] == [None] * len(refs)
    json.loads(script_json(data))
