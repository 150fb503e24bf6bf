"""Batched greedy decoding with a KV cache, as openai/whisper's `decoding.py` does it.

The loop is written out rather than delegated to `generate` so that every rule is visible
and testable: the prompt comes from the model's own special ids, special and timestamp
tokens are suppressed (no-timestamps transcription), a blank first token is suppressed,
and each clip stops at <|endoftext|> or at its token limit; a finished clip leaves the batch
(its rows of the KV cache and encoder states are dropped), so the others run faster.

Two guards keep a clip from looping ("i am sorry i am sorry ...", common for zero-shot
Whisper on child speech): the token limit grows with the clip's duration instead of being
one number for every clip, and a tail that repeats the same n-gram `repetition_limit` times
in a row ends the clip, keeping one copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import WhisperForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from kidwhisper.data.text import SpecialTokens

MIN_TOKENS = 8  # the duration-based limit never goes below this
MAX_REPEATED_NGRAM = 16  # longest repeating unit (in tokens) the repetition guard looks for


@dataclass(frozen=True)
class DecodingOptions:
    max_new_tokens: int = 128
    # Per-clip limit MIN_TOKENS + rate x seconds (None: max_new_tokens for every clip). Read
    # child speech runs at up to 3 tokens/s (so762-kids), fast adult speech about 4.
    max_tokens_per_second: float | None = 6.0
    repetition_limit: int | None = 4  # None: off; the references have at most 3 in a row
    suppress_blank: bool = True  # no " " or <|endoftext|> as the first token

    def token_limits(self, durations: list[float] | None, batch: int) -> list[int]:
        if durations is None or self.max_tokens_per_second is None:
            return [self.max_new_tokens] * batch
        rate = self.max_tokens_per_second
        return [min(self.max_new_tokens, MIN_TOKENS + math.ceil(rate * d)) for d in durations]


def repeated_tail(tokens: list[int], times: int) -> int:
    """Length n of the shortest n-gram that ends `tokens` `times` times in a row, else 0."""
    for n in range(1, min(MAX_REPEATED_NGRAM, len(tokens) // times) + 1):
        unit = tokens[-n:]
        if all(tokens[-n * (k + 1) : len(tokens) - n * k] == unit for k in range(1, times)):
            return n
    return 0


def _suppressed_ids(model: WhisperForConditionalGeneration, special: SpecialTokens) -> list[int]:
    """Non-speech symbols from the generation config, plus every special token but eot."""
    ids = set(getattr(model.generation_config, "suppress_tokens", None) or [])
    ids.update(range(special.sot, special.vocab_size))  # languages, tasks, timestamps...
    return sorted(i for i in ids if 0 <= i < special.vocab_size and i != special.eot)


def _blank_ids(model: WhisperForConditionalGeneration, special: SpecialTokens) -> list[int]:
    ids = getattr(model.generation_config, "begin_suppress_tokens", None)
    return list(ids) if ids else [special.eot]


@torch.inference_mode()
def greedy_decode(
    model: WhisperForConditionalGeneration,
    features: torch.Tensor,
    special: SpecialTokens,
    options: DecodingOptions | None = None,
    durations: list[float] | None = None,
) -> list[list[int]]:
    """Token ids (without prompt and <|endoftext|>) for a batch of log-mel `features`;
    `durations` (seconds of audio per clip) set the per-clip token limits."""
    options = options or DecodingOptions()
    device = next(model.parameters()).device
    features = features.to(device=device, dtype=model.dtype)
    batch = features.shape[0]
    encoder_states = model.model.encoder(features).last_hidden_state

    suppress = torch.tensor(_suppressed_ids(model, special), device=device)
    blank = torch.tensor(_blank_ids(model, special), device=device)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    inputs = torch.tensor([special.prefix] * batch, device=device)
    limits = options.token_limits(durations, batch)
    out: list[list[int]] = [[] for _ in range(batch)]
    rows = list(range(batch))  # the clip of each row of `inputs`, cache and encoder states
    active = [i for i in rows if limits[i] > 0]  # clips still decoding
    for step in range(max(limits)):
        if not active:
            break
        if len(active) < inputs.shape[0]:  # some clips finished: decode only the others
            keep = torch.tensor([i for i, clip in enumerate(rows) if clip in active], device=device)
            cache.batch_select_indices(keep)
            encoder_states, inputs = encoder_states[keep], inputs[keep]
        rows = list(active)
        hidden = model.model.decoder(
            input_ids=inputs,
            encoder_hidden_states=encoder_states,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        logits = model.proj_out(hidden[:, -1]).float()
        logits[:, suppress] = -torch.inf
        if step == 0 and options.suppress_blank:
            logits[:, blank] = -torch.inf
        tokens = logits.argmax(dim=-1)
        for clip, token in zip(rows, tokens.tolist(), strict=True):
            if _append(out[clip], token, limits[clip], special.eot, options):
                active.remove(clip)
        inputs = tokens[:, None]
    return out


def _append(tokens: list[int], token: int, limit: int, eot: int, options) -> bool:
    """Add `token` to a clip's output; say whether the clip is finished."""
    if token == eot:
        return True
    tokens.append(token)
    if options.repetition_limit and (n := repeated_tail(tokens, options.repetition_limit)):
        del tokens[len(tokens) - n * (options.repetition_limit - 1) :]
        return True
    return len(tokens) >= limit
