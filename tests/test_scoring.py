"""Tests for kidwhisper.inference.scoring: hand-computed cases that pin down the metric."""

from __future__ import annotations

import json
import math
from importlib.metadata import version
from importlib.resources import files

import jiwer
import pytest

from kidwhisper.data.text import english_spelling_map, normalize
from kidwhisper.inference.scoring import WerReport, corpus_wer, score

JIWER_MAJOR = int(version("jiwer").split(".")[0])

# The four edits that turn openai-whisper's english.json into the competition's map.
# Assigning to an existing key keeps its position; "mm" is new, so it lands at the end.
EDITS = {
    "archaeology": "archeology",  # upstream: "archeology</span>"
    "pummelled": "pummeled",  # upstream: "pummel"
    "pummelling": "pummeling",  # upstream: "pummeled"
    "mm": "hmm",  # upstream: absent
}

# (case id, reference, hypothesis, expected corpus WER), each worked out by hand.
WER_CASES = [
    ("identical", "the cat sat on the mat", "the cat sat on the mat", 0.0),
    ("one substitution in four words", "the dog is big", "the dog is small", 0.25),
    ("spoken number vs digits", "i have twenty five apples", "i have 25 apples", 0.0),
    ("hyphenated number", "twenty-five", "25", 0.0),
    # the normaliser expands "'s" to " is" and "n't" to " not"
    ("contraction it's", "it's my turn", "it is my turn", 0.0),
    ("contraction don't", "don't go", "do not go", 0.0),
    ("british spelling", "my favourite colour", "my favorite color", 0.0),
    # "mm" and "hmm" are both fillers that the normaliser deletes outright
    ("edited entry mm", "mm yes", "hmm yes", 0.0),
    ("edited entry archaeology", "i like archaeology", "i like archeology", 0.0),
    ("edited entry pummelled", "he pummelled it", "he pummeled it", 0.0),
    ("edited entry pummelling", "stop pummelling me", "stop pummeling me", 0.0),
    ("punctuation and casing", "Hello, World! How ARE you?", "hello world how are you", 0.0),
    ("fillers and bracketed noise", "i want that", "um I want [noise] that (laughs)", 0.0),
    ("empty prediction", "the cat sat", "", 1.0),
    ("one insertion in four words", "a b c d", "a b x c d", 0.25),
    ("insertions can exceed 100%", "the cat", "the big fat cat sat", 1.5),
]


@pytest.mark.parametrize(
    ("reference", "hypothesis", "expected"),
    [case[1:] for case in WER_CASES],
    ids=[case[0] for case in WER_CASES],
)
def test_corpus_wer_single_pair(reference: str, hypothesis: str, expected: float) -> None:
    assert corpus_wer([reference], [hypothesis]) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("it's", "it is"),
        ("twenty five", "25"),
        ("Colour", "color"),
        # The edited entries are applied (upstream gave "archeology</span>", "pummel", ...).
        ("archaeology", "archeology"),
        ("pummelled", "pummeled"),
        ("pummelling", "pummeling"),
        # A bare "mm" is deleted as a filler before the spelling map runs. The "mm" entry only
        # matters when "mm" appears after diacritics are stripped, as with "ṁm".
        ("mm", ""),
        ("ṁm", "hmm"),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text).strip() == expected


def test_corpus_average_is_not_mean_of_utterances() -> None:
    # 0 errors / 6 words and 1 error / 1 word: corpus WER is 1/7, the per-utterance mean is 0.5.
    references = ["the cat sat on the mat", "hi"]
    hypotheses = ["the cat sat on the mat", "bye"]
    assert corpus_wer(references, hypotheses) == pytest.approx(1 / 7)


def test_matches_jiwer_on_normalised_text() -> None:
    references = ["It's twenty five past", "my colour", "a b c"]
    hypotheses = ["it is 25 passed", "my color", ""]
    expected = jiwer.wer([normalize(t) for t in references], [normalize(t) for t in hypotheses])
    # 1 substitution + 3 deletions over 4 + 2 + 3 reference words
    assert expected == pytest.approx(4 / 9)
    assert corpus_wer(references, hypotheses) == pytest.approx(expected)


@pytest.mark.skipif(JIWER_MAJOR < 4, reason="jiwer < 4 raises on empty references")
def test_matches_jiwer_4_with_empty_references() -> None:
    references = ["It's twenty five past", "um", "a b c"]
    hypotheses = ["it is 25 passed", "okay then", ""]
    expected = jiwer.wer([normalize(t) for t in references], [normalize(t) for t in hypotheses])
    # 1 substitution + 2 insertions + 3 deletions over 4 + 0 + 3 reference words
    assert expected == pytest.approx(6 / 7)
    assert corpus_wer(references, hypotheses) == pytest.approx(expected)


def test_empty_reference_counts_hypothesis_words_as_insertions() -> None:
    # "um" normalises to "", so "hello there" adds 2 insertions and 0 reference words.
    assert corpus_wer(["um", "a b"], ["hello there", "a b"]) == pytest.approx(1.0)
    assert corpus_wer(["um", "a b"], ["", "a b"]) == 0.0


@pytest.mark.parametrize(
    ("references", "hypotheses"),
    [(["um", "(laughs)"], ["hello", ""]), ([], [])],
    ids=["all references empty", "no utterances"],
)
def test_no_reference_words_raises(references: list[str], hypotheses: list[str]) -> None:
    with pytest.raises(ValueError, match="no reference words"):
        corpus_wer(references, hypotheses)


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="3 references, 2 hypotheses"):
        corpus_wer(["a", "b", "c"], ["a", "b"])


def test_groups_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="1 groups, 2 references"):
        score(["a", "b"], ["a", "b"], groups=["3-4"])


def test_score_overall_and_per_group() -> None:
    references = ["a b c d", "x y", "p q", "um"]
    hypotheses = ["a b c e", "x y", "", "oh no"]
    groups = ["3-4", "5-7", "3-4", "8-11"]

    overall, by_group = score(references, hypotheses, groups)

    # 1 substitution + 2 deletions + 2 insertions over 4 + 2 + 2 + 0 reference words
    assert overall == WerReport(
        wer=5 / 8,
        substitutions=1,
        deletions=2,
        insertions=2,
        hits=5,
        reference_words=8,
        utterances=4,
    )
    assert overall.errors == 5
    assert overall.wer == pytest.approx(corpus_wer(references, hypotheses))
    assert list(by_group) == ["3-4", "5-7", "8-11"]
    assert by_group["3-4"] == WerReport(
        wer=0.5, substitutions=1, deletions=2, insertions=0, hits=3, reference_words=6, utterances=2
    )
    assert by_group["5-7"] == WerReport(
        wer=0.0, substitutions=0, deletions=0, insertions=0, hits=2, reference_words=2, utterances=1
    )
    # A group with no reference words has no defined rate, but its counts are still reported.
    only_empty = by_group["8-11"]
    assert math.isnan(only_empty.wer)
    assert (only_empty.insertions, only_empty.reference_words) == (2, 0)


def test_score_without_groups() -> None:
    overall, by_group = score(["the dog is big"], ["the dog is small"])
    assert overall.wer == pytest.approx(0.25)
    assert by_group == {}


def test_shipped_map_has_no_markup() -> None:
    mapping = english_spelling_map()
    assert not [key for key, value in mapping.items() if "<" in key + value or ">" in key + value]
    assert list(mapping)[-1] == "mm"


def test_shipped_map_is_upstream_with_exactly_four_edits() -> None:
    pytest.importorskip(
        "whisper_normalizer",
        reason="whisper-normalizer (a dev/test-only dependency) provides the upstream json",
    )
    upstream_text = (
        files("whisper_normalizer").joinpath("normalizers", "english.json").read_text("utf-8")
    )
    upstream = json.loads(upstream_text)
    shipped = english_spelling_map()

    expected = dict(upstream)
    expected.update(EDITS)
    assert shipped == expected
    assert list(shipped) == list(expected)  # same key order, "mm" appended last
    changed = {key for key in shipped if upstream.get(key) != shipped[key]}
    assert changed == set(EDITS)
