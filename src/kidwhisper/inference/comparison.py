"""Two systems on the same references: `kidwhisper compare PRED_A PRED_B REF`.

Each predictions file is scored on its own by `analysis.analyse` (the competition WER, per age
bucket and clip length). An utterance *differs* when the two normalised hypotheses differ (what
the metric sees: a change of case or punctuation alone is not a difference). A differing
utterance is `better` when B makes fewer errors on it than A, `worse` when more, and
`same-wer` when both make as many errors with different words.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from kidwhisper.inference.analysis import (
    Analysis,
    Reference,
    UtteranceScore,
    analyse,
    id_list,
    read_predictions,
    read_references,
)
from kidwhisper.inference.scoring import percent

BETTER, WORSE, SAME_WER = "better", "worse", "same-wer"
VERDICTS = (BETTER, WORSE, SAME_WER)


@dataclass(frozen=True)
class Difference:
    """One utterance the two systems transcribe differently (after normalisation)."""

    reference: Reference
    a: UtteranceScore
    b: UtteranceScore

    @property
    def verdict(self) -> str:
        """`better` / `worse` for B against A, by error count; `same-wer` when equal."""
        if self.b.errors < self.a.errors:
            return BETTER
        return WORSE if self.b.errors > self.a.errors else SAME_WER

    @property
    def delta(self) -> int:
        """B's errors minus A's on this utterance (negative: B is better)."""
        return self.b.errors - self.a.errors


@dataclass
class Comparison:
    """Systems A and B scored on the same references, and where they differ."""

    names: tuple[str, str]
    references: list[Reference]
    a: Analysis
    b: Analysis

    def differences(self) -> list[Difference]:
        """The utterances whose normalised hypotheses differ, in reference order."""
        pairs = zip(self.references, self.a.utterances, self.b.utterances, strict=True)
        return [Difference(r, ua, ub) for r, ua, ub in pairs if ua.hypothesis != ub.hypothesis]

    def counts(self) -> dict[str, int]:
        """How many utterances are better, worse, same-WER-but-different, and identical."""
        diffs = self.differences()
        count = Counter(d.verdict for d in diffs)
        return {**{v: count[v] for v in VERDICTS}, "identical": len(self.references) - len(diffs)}

    @property
    def unknown_ids(self) -> dict[str, list[str]]:
        """Prediction ids not in the reference, per system (only systems that have some)."""
        pairs = zip(self.names, (self.a, self.b), strict=True)
        return {name: r.unknown_ids for name, r in pairs if r.unknown_ids}

    def summary_lines(self, n: int = 10) -> list[str]:
        """The plain-text summary `kidwhisper compare` prints."""
        (na, nb), lines = self.names, []
        for name, r in zip(self.names, (self.a, self.b), strict=True):
            lines.append(f"{name}: WER {percent(r.overall.wer)} on {r.overall.utterances} utt.")
        systems = (self.a, self.b)
        for bucket in dict.fromkeys([*self.a.by_age, *self.b.by_age]):
            wa, wb = (r.by_age[bucket].wer if bucket in r.by_age else None for r in systems)
            lines.append(f"  age {bucket}: {na} {percent(wa)}, {nb} {percent(wb)}")
        c = self.counts()
        lines.append(
            f"{len(self.differences())} utterances differ: {c[BETTER]} better in {nb}, "
            f"{c[WORSE]} worse, {c[SAME_WER]} with as many errors; {c['identical']} identical"
        )
        for name, missing in zip(self.names, (self.a.missing_ids, self.b.missing_ids), strict=True):
            if missing:
                lines.append(f"{name}: {len(missing)} without prediction: {id_list(missing, n)}")
        return lines


def compare(
    a: dict[str, str],
    b: dict[str, str],
    references: list[Reference],
    names: tuple[str, str] = ("A", "B"),
) -> Comparison:
    """Score two prediction sets (id -> text) on `references` and pair them up."""
    return Comparison(tuple(names), references, analyse(a, references), analyse(b, references))


def compare_files(
    a: str | Path, b: str | Path, reference: str | Path, names: tuple[str, str] | None = None
) -> Comparison:
    """`compare` on two predictions jsonl files and a reference jsonl; names default to the
    files' stems (their paths when the stems are equal)."""
    if names is None:
        names = (Path(a).stem, Path(b).stem)
        if names[0] == names[1]:
            names = (str(a), str(b))
    refs = read_references(reference)
    return compare(read_predictions(a), read_predictions(b), refs, names)
