"""Batched greedy decoding with a KV cache, as openai/whisper's `decoding.py` does it.

The loop is written out rather than delegated to `generate` so that every rule is visible
and testable: the prompt comes from the model's own special ids, special and timestamp
tokens are suppressed (no-timestamps transcription), a blank first token is suppressed,
and each clip stops at <|endoftext|> or at `max_new_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import WhisperForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from kidwhisper.text import SpecialTokens


@dataclass(frozen=True)
class DecodingOptions:
    max_new_tokens: int = 128
    suppress_blank: bool = True  # no " " or <|endoftext|> as the first token


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
) -> list[list[int]]:
    """Token ids (without prompt and <|endoftext|>) for a batch of log-mel `features`."""
    options = options or DecodingOptions()
    device = next(model.parameters()).device
    features = features.to(device=device, dtype=model.dtype)
    batch = features.shape[0]
    encoder_states = model.model.encoder(features).last_hidden_state

    suppress = torch.tensor(_suppressed_ids(model, special), device=device)
    blank = torch.tensor(_blank_ids(model, special), device=device)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    inputs = torch.tensor([special.prefix] * batch, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    for step in range(options.max_new_tokens):
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
        tokens[finished] = special.eot
        steps.append(tokens)
        finished |= tokens == special.eot
        if finished.all():
            break
        inputs = tokens[:, None]

    out = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(batch)]
    return [_until_eot(seq, special.eot) for seq in out]


def _until_eot(tokens: list[int], eot: int) -> list[int]:
    return tokens[: tokens.index(eot)] if eot in tokens else tokens
