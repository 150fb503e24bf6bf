"""The competition's word error rate (WER), reproduced exactly.

The "On Top of Pasketti" Word track scores a submission with corpus WER
(``jiwer.wer(references, hypotheses)``) after both sides pass through transformers'
Whisper ``EnglishTextNormalizer``, built with the competition's English spelling map.

The normaliser and its spelling map live with the text: `data.text.normalize`.

Empty references: a reference can normalise to nothing, e.g. a clip transcribed only as
"um" or "(laughs)". Such a pair stays in the corpus with zero reference words, and any
hypothesis words count as insertions. This is how jiwer 4 does corpus WER, so ``corpus_wer``
equals jiwer 4's ``jiwer.wer`` on the normalised texts. The empty pairs are counted here, not
by jiwer, so the result is the same under jiwer 3, which raises on empty references. With no
reference words at all there is nothing to divide by, so ``corpus_wer`` raises ``ValueError``
(jiwer 4 would return the bare insertion count).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import jiwer

from kidwhisper.data.text import normalize

__all__ = ["WerReport", "corpus_wer", "percent", "score", "utterance_wer"]


@dataclass(frozen=True)
class WerReport:
    """Word error counts for a set of utterances, and the corpus WER they give."""

    wer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    reference_words: int
    utterances: int

    @property
    def errors(self) -> int:
        """Substitutions + deletions + insertions: the WER numerator."""
        return self.substitutions + self.deletions + self.insertions


def _check_lengths(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    # Fail before the slow normalisation, naming both lengths so misaligned inputs are easy to spot.
    if len(references) != len(hypotheses):
        raise ValueError(
            f"references and hypotheses differ in length: "
            f"{len(references)} references, {len(hypotheses)} hypotheses"
        )


def _report(references: list[str], hypotheses: list[str]) -> WerReport:
    """Count errors in already normalised texts; ``wer`` is NaN if there are no reference words."""
    # jiwer 3 raises on an empty reference (jiwer 4 does not), so empty references never reach
    # jiwer: aligning "" with a hypothesis gives one insertion per hypothesis word anyway.
    pairs = list(zip(references, hypotheses, strict=True))
    scored = [(ref, hyp) for ref, hyp in pairs if ref.split()]
    insertions = sum(len(hyp.split()) for ref, hyp in pairs if not ref.split())
    substitutions = deletions = hits = 0
    if scored:
        out = jiwer.process_words([ref for ref, _ in scored], [hyp for _, hyp in scored])
        substitutions, deletions, hits = out.substitutions, out.deletions, out.hits
        insertions += out.insertions
    reference_words = hits + substitutions + deletions
    errors = substitutions + deletions + insertions
    # With no reference words there is no rate (jiwer 4 returns the bare insertion count):
    # report NaN and let the caller decide.
    wer = errors / reference_words if reference_words else math.nan
    return WerReport(
        wer=wer,
        substitutions=substitutions,
        deletions=deletions,
        insertions=insertions,
        hits=hits,
        reference_words=reference_words,
        utterances=len(pairs),
    )


def _require_reference_words(report: WerReport) -> None:
    if report.reference_words == 0:
        raise ValueError(
            f"WER is undefined: all {report.utterances} references are empty after "
            "normalisation, so there are no reference words to divide by"
        )


def score(
    references: Sequence[str],
    hypotheses: Sequence[str],
    groups: Sequence[str] | None = None,
) -> tuple[WerReport, dict[str, WerReport]]:
    """Score hypotheses against references: the overall report, and one report per group.

    ``groups`` gives one label per utterance (e.g. an age bucket). Each group's WER is a
    corpus WER over that group's utterances. Groups are returned sorted by label, and a
    group whose references are all empty has ``wer`` NaN. Raises ``ValueError`` on length
    mismatches or when no reference has any words.
    """
    _check_lengths(references, hypotheses)
    if groups is not None and len(groups) != len(references):
        raise ValueError(
            f"groups and references differ in length: "
            f"{len(groups)} groups, {len(references)} references"
        )
    refs = [normalize(text) for text in references]
    hyps = [normalize(text) for text in hypotheses]
    overall = _report(refs, hyps)
    _require_reference_words(overall)

    by_group: dict[str, WerReport] = {}
    if groups is not None:
        # Each pair is aligned on its own, so per-group counts add up to the overall counts.
        members: dict[str, list[int]] = {}
        for index, label in enumerate(groups):
            members.setdefault(label, []).append(index)
        for label in sorted(members):
            indices = members[label]
            by_group[label] = _report([refs[i] for i in indices], [hyps[i] for i in indices])
    return overall, by_group


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Return the competition metric: corpus WER of the normalised texts (lower is better).

    Raises ``ValueError`` if the lengths differ or if every reference normalises to "".
    """
    overall, _ = score(references, hypotheses)
    return overall.wer


def utterance_wer(reference: str, hypothesis: str) -> float:
    """One utterance's WER under the competition's normaliser; NaN when the reference has
    no words once normalised (a clip transcribed only as "um": there is no rate)."""
    return _report([normalize(reference)], [normalize(hypothesis)]).wer


def percent(value: float | None) -> str:
    """A WER as every report prints it: `21.24%`; `n/a` when not measured (None) or when
    there were no reference words (NaN)."""
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"
