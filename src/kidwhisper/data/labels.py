"""Training labels: normalised as the config says, and checked against the tokenizer.

`data.label_normalization: metric` trains on what the competition scores: each label goes
through the competition normaliser (data/text.py: lower case, no punctuation, American
spelling, numbers as digits, fillers such as "um" removed). A label with nothing left is a bad entry
("empty after normalisation"), never trained on as an empty transcript by accident.

Once the model (and so its tokenizer) is loaded, every label is encoded as training encodes
it and decoded as inference decodes it. A label that does not come back unchanged is a bad
entry ("label not round-trip"): text holding special-token strings (`<|endoftext|>`,
`<|en|>`, timestamps) would be trained as those control tokens, and a string that cannot
be encoded at all (a lone surrogate from a `\\ud800` escape) would stop the data loader.
Labels longer than the decoder's positions are reported here too, before any audio loads.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from transformers import WhisperTokenizerFast

from kidwhisper.data.dataset import Utterance
from kidwhisper.data.problems import EMPTY_NORMALIZED, LABEL_TOO_LONG, NOT_ROUND_TRIP, DataProblems
from kidwhisper.data.text import SpecialTokens, normalize

log = logging.getLogger(__name__)


def normalize_labels(
    utterances: list[Utterance], mode: str, problems: DataProblems
) -> list[Utterance]:
    """The utterances with labels as `data.label_normalization` says (`none` or `metric`);
    labels the metric's normaliser empties are reported to `problems` and left out."""
    if mode == "none":
        return utterances
    if mode != "metric":
        raise ValueError(f"data.label_normalization: unknown mode {mode!r}")
    kept = []
    for utt in utterances:
        text = normalize(utt.text or "")
        if not text.strip():
            message = (
                f"{utt.audio} (utterance {utt.utterance_id}): label {utt.text!r} is empty once "
                "normalised (data.label_normalization: metric); the metric ignores what it says"
            )
            problems.add(utt.utterance_id, EMPTY_NORMALIZED, message)
            continue
        kept.append(replace(utt, text=text))
    log.info("labels normalised as the metric does (%d kept)", len(kept))
    return kept


def screen_labels(
    utterances: list[Utterance],
    tokenizer: WhisperTokenizerFast,
    special: SpecialTokens,
    max_tokens: int,
    problems: DataProblems,
) -> list[Utterance]:
    """The utterances whose labels survive encode/decode and fit `max_tokens` decoder
    positions (prefix and end token included); the rest go to `problems`."""
    texts = [" " + (u.text or "").strip() for u in utterances]
    try:
        encoded: list[list[int] | None] = tokenizer(texts, add_special_tokens=False)["input_ids"]
    except (TypeError, ValueError):  # some text cannot be encoded: find which, one by one
        encoded = [_encode(tokenizer, text) for text in texts]
    decoded = tokenizer.batch_decode([ids or [] for ids in encoded], skip_special_tokens=True)
    overhead = len(special.prefix) + 1  # prefix and <|endoftext|>
    kept = []
    for utt, ids, back in zip(utterances, encoded, decoded, strict=True):
        where = f"{utt.audio} (utterance {utt.utterance_id})"
        if ids is None or back.strip() != (utt.text or "").strip():
            came_back = "cannot be encoded" if ids is None else f"decodes as {back.strip()!r}"
            message = (
                f"{where}: label {utt.text!r} {came_back}: the tokenizer cannot carry it "
                "(special-token strings or characters it cannot encode); fix the text"
            )
            problems.add(utt.utterance_id, NOT_ROUND_TRIP, message)
        elif len(ids) + overhead > max_tokens:
            message = (
                f"{where}: label has {len(ids) + overhead} tokens, more than the decoder's "
                f"{max_tokens}"
            )
            problems.add(utt.utterance_id, LABEL_TOO_LONG, message)
        else:
            kept.append(utt)
    return kept


def _encode(tokenizer: WhisperTokenizerFast, text: str) -> list[int] | None:
    try:
        return tokenizer.encode(text, add_special_tokens=False)
    except (TypeError, ValueError):
        return None
