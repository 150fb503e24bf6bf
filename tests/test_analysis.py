"""Tests for kidwhisper.inference.analysis and `kidwhisper score`: hand-computed WERs, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kidwhisper.cli.main import main
from kidwhisper.inference.analysis import (
    Reference,
    ScoreInputError,
    analyse,
    analyse_files,
    length_bin,
    read_predictions,
    read_references,
)
from kidwhisper.inference.scoring import corpus_wer

from .conftest import SO762, needs_shared

# (case id, reference, prediction, expected WER, (substitutions, deletions, insertions)),
# each worked out by hand on the normalised texts.
CASES = [
    # 0 errors / 3 words
    ("exact match", "the cat sat", "the cat sat", 0.0, (0, 0, 0)),
    # big -> small: 1 / 4
    ("one substitution", "the dog is big", "the dog is small", 0.25, (1, 0, 0)),
    # x inserted: 1 / 4
    ("one insertion", "a b c d", "a b x c d", 0.25, (0, 0, 1)),
    # "we" dropped: 1 / 4
    ("one deletion", "we call it bear", "call it bear", 0.25, (0, 1, 0)),
    # both sides normalise to "i have 25 apples": 0 / 4
    ("spoken number vs digits", "I have twenty five apples", "i have 25 apples", 0.0, (0, 0, 0)),
    # "i'm" -> "i am": 0 / 3
    ("contraction", "I'm here", "I am here", 0.0, (0, 0, 0)),
    # the spelling map turns both British words American: 0 / 3
    ("british spelling", "my favourite colour", "my favorite color", 0.0, (0, 0, 0)),
    # lower-cased, punctuation removed: 0 / 5
    (
        "punctuation and casing",
        "Hello, World! How ARE you?",
        "hello world how are you",
        0.0,
        (0, 0, 0),
    ),
    # every reference word deleted: 3 / 3
    ("empty prediction", "the cat sat", "", 1.0, (0, 3, 0)),
]


def refs(*texts: str, ages: list[str | None] | None = None) -> list[Reference]:
    ages = ages or [None] * len(texts)
    return [
        Reference(f"u{i}", text, age) for i, (text, age) in enumerate(zip(texts, ages, strict=True))
    ]


@pytest.mark.parametrize(
    ("reference", "prediction", "wer", "counts"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_single_utterance(reference: str, prediction: str, wer: float, counts: tuple) -> None:
    result = analyse({"u0": prediction}, refs(reference))
    o = result.overall
    assert o.wer == pytest.approx(wer)
    assert (o.substitutions, o.deletions, o.insertions) == counts
    (utt,) = result.utterances
    assert (utt.substitutions, utt.deletions, utt.insertions) == counts
    assert utt.wer == pytest.approx(wer)
    assert result.missing_ids == result.unknown_ids == []


def test_missing_prediction_scores_as_empty_and_is_listed() -> None:
    # u0 exact (0 / 2); u1 has no prediction: 3 deletions / 3 words -> 3 / 5
    result = analyse({"u0": "a b"}, refs("a b", "c d e"))
    assert result.overall.wer == pytest.approx(0.6)
    assert result.overall.utterances == 2
    assert result.missing_ids == ["u1"]
    assert result.worst(5)[0].missing
    assert result.deletions == {"c": 1, "d": 1, "e": 1}


def test_unknown_prediction_ids_are_listed_not_scored() -> None:
    # "zz" is not in the reference: u0 alone is scored, exact -> 0 / 2
    result = analyse({"u0": "a b", "zz": "extra words"}, refs("a b"))
    assert result.overall.wer == 0.0
    assert result.unknown_ids == ["zz"]
    assert result.insertions == {}


def test_reference_that_normalises_to_empty() -> None:
    # "um" normalises to "": 0 reference words, "hello there" is 2 insertions.
    # Corpus: 2 insertions / 2 words ("a b" matched exactly) = 1.0, as scoring.corpus_wer says.
    result = analyse({"u0": "hello there", "u1": "a b"}, refs("um", "a b"))
    assert result.overall.wer == pytest.approx(1.0)
    assert result.overall.wer == pytest.approx(corpus_wer(["um", "a b"], ["hello there", "a b"]))
    empty = result.utterances[0]
    assert (empty.reference, empty.insertions, empty.reference_words) == ("", 2, 0)
    assert math.isnan(empty.wer)
    assert result.insertions == {"hello": 1, "there": 1}
    # with equal error counts an undefined (NaN) WER ranks first
    assert [u.utterance_id for u in result.worst(3)] == ["u0"]


def test_per_age_bucket_split() -> None:
    # 5-7: "a b c d" vs "a b c e" (1 sub) + "p q" vs "" (2 dels) -> 3 / 6 = 0.5
    # 8-11: "x y" exact -> 0 / 2;  12+: "m n o p" vs "m n o" (1 del) -> 1 / 4 = 0.25
    # overall: 4 / 12
    result = analyse(
        {"u0": "a b c e", "u1": "x y", "u2": "", "u3": "m n o"},
        refs("a b c d", "x y", "p q", "m n o p", ages=["5-7", "8-11", "5-7", "12+"]),
    )
    assert result.overall.wer == pytest.approx(4 / 12)
    assert list(result.by_age) == ["5-7", "8-11", "12+"]  # by age, not alphabetically
    assert {k: r.wer for k, r in result.by_age.items()} == pytest.approx(
        {"5-7": 0.5, "8-11": 0.0, "12+": 0.25}
    )
    assert result.by_length == {}  # no durations in the reference


def test_top_substitutions_insertions_deletions() -> None:
    # u0: bear->bare, cat->hat;  u1: bear->bare, "big" inserted;  u2: bear->bare, "the"
    # deleted (each alignment unique); u3 ("um", no words) adds "yes" as an insertion.
    # S = 2 + 1 + 1 = 4, D = 1, I = 2 over 2 + 2 + 4 + 0 = 8 reference words: WER 7 / 8
    result = analyse(
        {"u0": "bare hat", "u1": "bare a big", "u2": "bare and cat", "u3": "yes"},
        refs("bear cat", "bear a", "bear and the cat", "um"),
    )
    assert result.substitutions == {("bear", "bare"): 3, ("cat", "hat"): 1}
    assert result.insertions == {"big": 1, "yes": 1}
    assert result.deletions == {"the": 1}
    o = result.overall
    assert (o.substitutions, o.deletions, o.insertions, o.reference_words) == (4, 1, 2, 8)
    assert o.wer == pytest.approx(7 / 8)
    # per-utterance counts add up to the corpus counts from scoring.score
    assert sum(u.errors for u in result.utterances) == o.errors
    # u0, u1, u2 have 2 errors each; u0 and u1 (WER 1.0) rank above u2 (0.5)
    assert [u.utterance_id for u in result.worst(2)] == ["u0", "u1"]


@pytest.mark.parametrize(
    ("seconds", "label"),
    [
        (None, "unknown"),
        (0.5, "<2 s"),
        (2.0, "2-5 s"),
        (9.99, "5-10 s"),
        (10, "10-20 s"),
        (20, ">=20 s"),
    ],
)
def test_length_bin(seconds: float | None, label: str) -> None:
    assert length_bin(seconds) == label


def test_wer_by_clip_length_in_bin_order() -> None:
    # 12 s clip: 1 sub / 2 words;  1 s clip: exact;  no duration: "unknown", exact
    references = [
        Reference("u0", "a b", duration=12.0),
        Reference("u1", "c", duration=1.0),
        Reference("u2", "d"),
    ]
    result = analyse({"u0": "a x", "u1": "c", "u2": "d"}, references)
    assert list(result.by_length) == ["<2 s", "10-20 s", "unknown"]
    assert result.by_length["10-20 s"].wer == pytest.approx(0.5)


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(uid: str, text: str, **extra) -> dict:
    return {"utterance_id": uid, "orthographic_text": text, **extra}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([row("a", "x"), "{not json"], r"pred\.jsonl:2: not valid JSON"),
        ([row("a", "x"), {"utterance_id": "b"}], r"pred\.jsonl:2: missing .*'orthographic_text'"),
        (
            [row("a", "x"), "", row("a", "y")],
            r"pred\.jsonl:3: duplicate utterance_id a \(first at line 1\)",
        ),
        (["[1, 2]"], r"pred\.jsonl:1: expected a JSON object"),
    ],
    ids=["bad json", "missing field", "duplicate id", "not an object"],
)
def test_bad_line_names_file_and_line(tmp_path: Path, lines: list, message: str) -> None:
    with pytest.raises(ScoreInputError, match=message):
        read_predictions(write_jsonl(tmp_path / "pred.jsonl", lines))


def test_reference_checks(tmp_path: Path) -> None:
    with pytest.raises(ScoreInputError, match=r"ref\.jsonl: no utterances"):
        read_references(write_jsonl(tmp_path / "ref.jsonl", [""]))
    bad = write_jsonl(tmp_path / "ref.jsonl", [row("a", "x", audio_duration_sec="long")])
    with pytest.raises(ScoreInputError, match=r"ref\.jsonl:1: audio_duration_sec"):
        read_references(bad)
    ref = write_jsonl(tmp_path / "ref.jsonl", [row("a", "um")])
    with pytest.raises(ScoreInputError, match="no reference words"):
        analyse_files(write_jsonl(tmp_path / "pred.jsonl", [row("a", "")]), ref)


def test_cli_bad_line_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred = write_jsonl(tmp_path / "pred.jsonl", [row("a", "x"), "{oops"])
    ref = write_jsonl(tmp_path / "ref.jsonl", [row("a", "x")])
    assert main(["score", str(pred), str(ref)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {pred}:2: not valid JSON (")
    assert err.count("\n") == 1


def test_cli_prints_and_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # 5-7: "we call it bear" vs "we call it bare" (1 sub / 4); 8-11: "look at me" missing
    # (3 dels / 3). Overall 4 / 7 = 57.14%.
    ref = write_jsonl(
        tmp_path / "ref.jsonl",
        [
            row("a", "We call it bear.", age_bucket="5-7", audio_duration_sec=2.5),
            row("b", "Look at me!", age_bucket="8-11", audio_duration_sec=1.2),
        ],
    )
    pred = write_jsonl(tmp_path / "pred.jsonl", [row("a", "we call it bare")])
    report = tmp_path / "out" / "report.md"
    assert main(["score", str(pred), str(ref), "--report", str(report), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("WER 57.14% on 2 utterances (7 reference words")
    assert "  age 5-7: 25.00% (1 utterances)\n  age 8-11: 100.00% (1 utterances)\n" in out
    assert "1 reference utterance(s) had no prediction and were scored as empty: b" in out
    assert "     1  bear -> bare" in out
    assert "  b (no prediction): 3 errors, WER 100.00%" in out
    text = report.read_text()
    assert "![WER by age bucket and clip length](report_wer.png)" in text
    assert "| 5-7 | 1 | 4 | 25.00% | 1 | 0 | 0 |" in text
    assert "| <2 s | 1 | 3 | 100.00% | 0 | 3 | 0 |" in text
    assert (tmp_path / "out" / "report_wer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_unknown_ids_are_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ref = write_jsonl(tmp_path / "ref.jsonl", [row("a", "hello")])
    pred = write_jsonl(tmp_path / "pred.jsonl", [row("a", "hello"), row("zz", "hi")])
    assert main(["score", str(pred), str(ref)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("WER 0.00% on 1 utterances")
    assert "error: 1 prediction id(s) not in" in captured.err
    assert captured.err.rstrip().endswith("were not scored: zz")


@needs_shared
@pytest.mark.integration
def test_so762_dev_against_itself_is_zero() -> None:
    dev = SO762 / "dev.jsonl"
    result = analyse_files(dev, dev)
    assert result.overall.wer == 0.0
    assert result.overall.utterances == 160
    assert result.missing_ids == result.unknown_ids == []
    assert list(result.by_age) == ["5-7", "8-11"]
    assert all(r.wer == 0.0 for r in result.by_length.values())
    assert result.worst(10) == []
