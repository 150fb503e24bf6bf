"""Bad training data, counted: every entry that cannot be used is reported once, with why.

Nobody checks a corpus of 100,000 clips by hand, so a training run meets missing files,
cut-off downloads, silence, empty or runaway labels and broken manifest lines. The policy
(`data.bad_entries`) decides what happens: `skip` (the default for training) leaves the
entry out, logs it once and counts it under its reason; `fail` stops at the first one.
Either way the message names the file (and line) and says what to do. Evaluation never
skips: a clip it cannot read is scored as an empty prediction (inference/evaluation.py).

Entries are found in four places, each reporting here: reading the manifest (bad lines,
duplicate ids, empty text, labels empty once normalised), the checks before training that
need no audio (durations from the manifest), the label checks once the tokenizer is loaded
(labels.py: labels that do not survive encode/decode, label lengths in tokens), and loading
each clip (audio.py's reasons, silence, the real duration). `kidwhisper filter`
(inference/curation.py) reports the utterances a reference model transcribes too badly the same way.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from kidwhisper.errors import UserError

log = logging.getLogger(__name__)

Policy = Literal["skip", "fail"]

# Reasons found outside audio.py (which names its own: missing audio, empty file, ...).
MALFORMED, NOT_UTF8, DUPLICATE = "malformed line", "not UTF-8", "duplicate id"
EMPTY_TEXT, LABEL_TOO_LONG = "empty text", "label too long"
TOO_SHORT, TOO_LONG, SILENT = "too short", "too long", "silent"
NOT_ROUND_TRIP, EMPTY_NORMALIZED = "label not round-trip", "empty after normalisation"
HIGH_WER, UNDECODABLE = "WER above threshold", "not decodable"

SILENCE_PEAK = 1e-4  # below -80 dBFS at its loudest sample: nothing to transcribe
MAX_LOGGED = 20  # entries named in the log one by one; the rest only counted


class BadDataError(UserError, ValueError):
    """A bad entry under the `fail` policy; the message names the file and line."""


@dataclass
class DataProblems:
    """The bad entries of a run: key (utterance id, or file:line) -> [reason, message]."""

    policy: Policy = "skip"
    entries: dict[str, list[str]] = field(default_factory=dict)

    def add(self, key: str, reason: str, message: str) -> bool:
        """Record a bad entry (once); raise under the `fail` policy. True if it is new."""
        if self.policy == "fail":
            raise BadDataError(
                f"{message} (set data.bad_entries: skip to leave such entries out and count them)"
            )
        if key in self.entries:
            return False
        self.entries[key] = [reason, message]
        if len(self.entries) <= MAX_LOGGED:
            log.warning("skipping %s: %s", reason, message)
        elif len(self.entries) == MAX_LOGGED + 1:
            log.warning("more bad entries: only counted from now on (see the run's metrics)")
        return True

    def merge(self, other: dict[str, list[str]]) -> None:
        """Take in entries another process found (no logging: that process logged them)."""
        for key, value in other.items():
            self.entries.setdefault(key, list(value))

    def counts(self) -> dict[str, int]:
        """Bad entries per reason, most frequent first."""
        return dict(Counter(reason for reason, _ in self.entries.values()).most_common())

    def summary(self) -> str:
        """One line for the end of a run: 'skipped 7 bad entries: 4 missing audio, ...'."""
        if not self.entries:
            return "no bad entries"
        parts = ", ".join(f"{n} {reason}" for reason, n in self.counts().items())
        return f"skipped {len(self.entries)} bad entries: {parts}"

    def __len__(self) -> int:
        return len(self.entries)


def duration_problem(seconds: float, min_seconds: float, max_seconds: float) -> str | None:
    """The reason a clip of `seconds` is outside the training range, or None."""
    if seconds < min_seconds:
        return TOO_SHORT
    if seconds > max_seconds:
        return TOO_LONG
    return None


def duration_message(where: str, seconds: float, min_seconds: float, max_seconds: float) -> str:
    return (
        f"{where}: clip is {seconds:.2f} s, outside data.min_seconds..data.max_seconds "
        f"({min_seconds:g}..{max_seconds:g} s); Whisper sees at most 30 s, so a longer "
        "clip's label would not match its audio"
    )
