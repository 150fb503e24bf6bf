"""Batched transcription: clips sorted by length, short encoder input, greedy or beam decoding.

This is the part of evaluation that needs no references and no metric, so that a packaged
submission can ship it alone. Clips are decoded longest first: batches then hold clips of
similar length (little padding, short encoder input under the `batch` audio context) and
an out-of-memory error, if any, comes on the first batch rather than after an hour.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from kidwhisper.data.audio import CHUNK_SECONDS
from kidwhisper.data.dataset import SpeechDataset, Utterance, WhisperCollator, clip_seconds
from kidwhisper.device import release_memory
from kidwhisper.inference.decoding import DecodingOptions, decode

if TYPE_CHECKING:
    from kidwhisper.models.factory import WhisperModel

log = logging.getLogger(__name__)


def by_length(utterances: list[Utterance]) -> list[Utterance]:
    """Longest first; ties keep manifest order."""
    return sorted(utterances, key=clip_seconds, reverse=True)


@torch.inference_mode()
def transcribe(
    wm: WhisperModel,
    utterances: list[Utterance],
    batch_size: int = 16,
    options: DecodingOptions | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Transcripts (greedy, or beam search as `options` say) keyed by utterance id, plus
    the (id, error) of clips that could not be read or decoded."""
    dataset = SpeechDataset(by_length(utterances), wm.n_mels, context=wm.audio_context)
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
            _warn_long(batch)
            texts.update(_decode_batch(wm, batch, options, errors))
    wm.model.train(was_training)
    return texts, errors


def _warn_long(batch: dict) -> None:
    for uid, seconds in zip(batch["utterance_ids"], batch["durations"], strict=True):
        if seconds > CHUNK_SECONDS:
            log.warning(
                "%s is %.1f s: only its first %d s are decoded (`kidwhisper transcribe` "
                "splits long audio)",
                uid,
                seconds,
                CHUNK_SECONDS,
            )


def _decode_batch(
    wm: WhisperModel, batch: dict, options: DecodingOptions, errors: list[tuple[str, str]]
) -> dict[str, str]:
    """Decode a batch; if that fails (out of memory, a kernel error), retry clip by clip so
    one bad clip costs only itself: it gets an empty transcript and an entry in `errors`."""
    ids, features, durations = batch["utterance_ids"], batch["input_features"], batch["durations"]
    try:
        tokens = decode(wm.model, features, wm.special, options, durations)
    except (RuntimeError, torch.OutOfMemoryError) as err:
        log.warning("decoding a batch of %d failed (%s); retrying clip by clip", len(ids), err)
        release_memory()
        tokens = []
        for i, uid in enumerate(ids):
            clip = features[i : i + 1]
            try:
                one = decode(wm.model, clip, wm.special, options, [durations[i]])
            except (RuntimeError, torch.OutOfMemoryError) as clip_err:
                log.warning("cannot decode %s: %s", uid, clip_err)
                errors.append((uid, f"decoding failed: {clip_err}"))
                release_memory()
                one = [[]]
            tokens += one
    decoded = wm.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return dict(zip(ids, (text.strip() for text in decoded), strict=True))
