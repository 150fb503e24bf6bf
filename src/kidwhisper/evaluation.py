"""Evaluation recipe: transcribe a manifest with greedy decoding and score it.

Nothing is skipped silently: a clip that cannot be read gets an empty prediction (so its
reference words count as deletions) and is listed in the result's `errors`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from kidwhisper.config import EvaluationConfig
from kidwhisper.data import SpeechDataset, Utterance, WhisperCollator
from kidwhisper.decoding import DecodingOptions, greedy_decode
from kidwhisper.models import WhisperModel
from kidwhisper.scoring import WerReport, score

log = logging.getLogger(__name__)


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
    return DecodingOptions(ev.max_new_tokens, ev.max_tokens_per_second, ev.repetition_limit)


def transcribe(
    wm: WhisperModel,
    utterances: list[Utterance],
    batch_size: int = 16,
    options: DecodingOptions | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Greedy transcripts keyed by utterance id, plus the (id, error) of clips that could not
    be read or decoded."""
    dataset = SpeechDataset(utterances, wm.n_mels)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=WhisperCollator(wm.special),
    )
    options = options or DecodingOptions()
    texts: dict[str, str] = {}
    errors: list[tuple[str, str]] = []
    was_training = wm.model.training
    wm.model.eval()
    for batch in tqdm(loader, desc="decoding", unit="batch", disable=not progress):
        errors += batch["errors"]
        for uid, error in batch["errors"]:
            log.warning("cannot decode %s: %s", uid, error)
        if "input_features" in batch:
            texts.update(_decode_batch(wm, batch, options, errors))
    wm.model.train(was_training)
    return texts, errors


def _decode_batch(
    wm: WhisperModel, batch: dict, options: DecodingOptions, errors: list[tuple[str, str]]
) -> dict[str, str]:
    """Decode a batch; if that fails (out of memory, a kernel error), retry clip by clip so
    one bad clip costs only itself: it gets an empty transcript and an entry in `errors`."""
    ids, features, durations = batch["utterance_ids"], batch["input_features"], batch["durations"]
    try:
        tokens = greedy_decode(wm.model, features, wm.special, options, durations)
    except (RuntimeError, torch.OutOfMemoryError) as err:
        log.warning("decoding a batch of %d failed (%s); retrying clip by clip", len(ids), err)
        _release_cached_memory()
        tokens = []
        for i, uid in enumerate(ids):
            clip = features[i : i + 1]
            try:
                one = greedy_decode(wm.model, clip, wm.special, options, [durations[i]])
            except (RuntimeError, torch.OutOfMemoryError) as clip_err:
                log.warning("cannot decode %s: %s", uid, clip_err)
                errors.append((uid, f"decoding failed: {clip_err}"))
                _release_cached_memory()
                one = [[]]
            tokens += one
    decoded = wm.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return dict(zip(ids, (text.strip() for text in decoded), strict=True))


def _release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for p in result.predictions:
            row = {
                "utterance_id": p["utterance_id"],
                "orthographic_text": p["prediction"],
                "reference": p["reference"],
                "age_bucket": p["age_bucket"],
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


@torch.inference_mode()
def mean_loss(wm: WhisperModel, batches: list[dict]) -> float:
    """Teacher-forced loss over prepared batches (used by tests and training logs)."""
    losses = [
        wm.model(
            input_features=b["input_features"],
            decoder_input_ids=b["decoder_input_ids"],
            labels=b["labels"],
        ).loss.item()
        for b in batches
    ]
    return sum(losses) / len(losses)
