"""Evaluation recipe: transcribe a manifest (greedy or beam search) and score it.

Nothing is skipped silently: a clip that cannot be read gets an empty prediction (so its
reference words count as deletions) and is listed in the result's `errors`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from kidwhisper.config import EvaluationConfig
from kidwhisper.data.dataset import Utterance
from kidwhisper.files import atomic_open
from kidwhisper.inference.batching import transcribe
from kidwhisper.inference.decoding import DecodingOptions
from kidwhisper.inference.scoring import WerReport, score
from kidwhisper.models.factory import WhisperModel

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "decoding_options", "evaluate", "save_predictions", "transcribe"]


@dataclass
class EvalResult:
    wer: float
    report: WerReport
    by_age: dict[str, WerReport]
    predictions: list[dict]  # utterance_id, reference, prediction, age_bucket
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        """JSON-friendly figures for metrics files."""
        return {
            "wer": self.wer,
            "wer_by_age": {group: r.wer for group, r in sorted(self.by_age.items())},
            "utterances": len(self.predictions),
            "unreadable_clips": len(self.errors),
            "seconds": round(self.seconds, 2),
        }


def decoding_options(ev: EvaluationConfig) -> DecodingOptions:
    """The decoding settings of an `evaluation:` config section."""
    return DecodingOptions(
        ev.max_new_tokens,
        ev.max_tokens_per_second,
        ev.repetition_limit,
        beam_size=ev.beam_size,
        length_penalty=ev.length_penalty,
    )


def evaluate(
    wm: WhisperModel,
    utterances: list[Utterance],
    batch_size: int = 16,
    options: DecodingOptions | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> EvalResult:
    """Transcribe `utterances` and score them with the competition's WER, per age bucket too."""
    start = time.perf_counter()
    texts, errors = transcribe(wm, utterances, batch_size, options, num_workers, progress)
    result = score_predictions(utterances, texts, errors)
    result.seconds = time.perf_counter() - start
    return result


def score_predictions(
    utterances: list[Utterance], texts: dict[str, str], errors: list[tuple[str, str]]
) -> EvalResult:
    """Score transcripts against the utterances' references; a missing one counts as empty."""
    predictions = [
        {
            "utterance_id": u.utterance_id,
            "reference": u.text or "",
            "prediction": texts.get(u.utterance_id, ""),
            "age_bucket": u.age_bucket or "unknown",
        }
        for u in utterances
    ]
    report, by_age = score(
        [p["reference"] for p in predictions],
        [p["prediction"] for p in predictions],
        groups=[p["age_bucket"] for p in predictions],
    )
    return EvalResult(report.wer, report, by_age, predictions, errors)


def save_predictions(result: EvalResult, path: str | Path) -> Path:
    """Write predictions as jsonl: `utterance_id`, `orthographic_text` (the submission
    schema) plus the reference and age bucket for error analysis."""
    path = Path(path)
    with atomic_open(path) as out:  # a crash leaves the previous file, never half of one
        for p in result.predictions:
            row = {
                "utterance_id": p["utterance_id"],
                "orthographic_text": p["prediction"],
                "reference": p["reference"],
                "age_bucket": p["age_bucket"],
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
