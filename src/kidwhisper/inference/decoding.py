"""Batched greedy and beam-search decoding with a KV cache, as openai/whisper's `decoding.py`
does them.

The loops are written out rather than delegated to `generate` so that every rule is visible
and testable: the prompt comes from the model's own special ids, special and timestamp
tokens are suppressed (no-timestamps transcription), a blank first token is suppressed,
and each clip stops at <|endoftext|> or at its token limit; a finished clip leaves the batch
(its rows of the KV cache and encoder states are dropped), so the others run faster.

Two guards keep a clip from looping ("i am sorry i am sorry ...", common for zero-shot
Whisper on child speech): the token limit grows with the clip's duration instead of being
one number for every clip, and a tail that repeats the same n-gram `repetition_limit` times
in a row ends the clip, keeping one copy. Beam search applies both to every beam.

Beam search (`DecodingOptions.beam_size` > 1) follows Whisper's `BeamSearchDecoder`: each
live beam offers its `beam_size + 1` best next tokens, the best `beam_size` unfinished
candidates of a clip live on, finished ones are collected until the clip has
`round(beam_size * patience)`, and `rank_score` (Whisper's `MaximumLikelihoodRanker`) picks
the transcript. The encoder runs once per clip; its cross-attention cache is copied to the
clip's beams only when the rows change hands, the self-attention cache is reordered by beam
each step.
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
    beam_size: int = 1  # 1: greedy decoding
    # Whisper's ranking of finished beams: None divides the sum log-probability by the
    # length, a number alpha by ((5 + length) / 6) ** alpha (Wu et al. 2016).
    length_penalty: float | None = None
    patience: float = 1.0  # collect round(beam_size * patience) finished beams per clip

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.patience <= 0:
            raise ValueError(f"beam_size must be >= 1 and patience > 0, got {self}")

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


def ending(tokens: list[int], token: int, limit: int, eot: int, options: DecodingOptions):
    """If `token` after `tokens` ends the clip, how many of `tokens + [token]` to keep (the
    end token is never kept; a repeated tail keeps one copy); None if the clip goes on."""
    if token == eot:
        return len(tokens)
    tokens = [*tokens, token]
    if options.repetition_limit and (n := repeated_tail(tokens, options.repetition_limit)):
        return len(tokens) - n * (options.repetition_limit - 1)
    return len(tokens) if len(tokens) >= limit else None


def _suppressed_ids(model: WhisperForConditionalGeneration, special: SpecialTokens) -> list[int]:
    """Non-speech symbols from the generation config, plus every special token but eot."""
    ids = set(getattr(model.generation_config, "suppress_tokens", None) or [])
    ids.update(range(special.sot, special.vocab_size))  # languages, tasks, timestamps...
    return sorted(i for i in ids if 0 <= i < special.vocab_size and i != special.eot)


def _blank_ids(model: WhisperForConditionalGeneration, special: SpecialTokens) -> list[int]:
    ids = getattr(model.generation_config, "begin_suppress_tokens", None)
    return list(ids) if ids else [special.eot]


class DecoderState:
    """The decoder side of a batch: encoder states, KV cache and the token rules. Row r of
    the decoder belongs to clip `clips[r]`; `select` keeps (or repeats) rows."""

    def __init__(
        self,
        model: WhisperForConditionalGeneration,
        features: torch.Tensor,
        special: SpecialTokens,
        options: DecodingOptions,
    ) -> None:
        self.model, self.options = model, options
        self.device = next(model.parameters()).device
        features = features.to(device=self.device, dtype=model.dtype)
        self.encoder_states = model.model.encoder(features).last_hidden_state
        self.suppress = torch.tensor(_suppressed_ids(model, special), device=self.device)
        self.blank = torch.tensor(_blank_ids(model, special), device=self.device)
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self.clips = list(range(features.shape[0]))
        self.first = True

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Float32 next-token logits (rows, vocabulary) for the rows' newest `inputs`, with
        suppressed tokens at -inf."""
        hidden = self.model.model.decoder(
            input_ids=inputs.to(self.device),
            encoder_hidden_states=self.encoder_states,
            past_key_values=self.cache,
            use_cache=True,
        ).last_hidden_state
        logits = self.model.proj_out(hidden[:, -1]).float()
        logits[:, self.suppress] = -torch.inf
        if self.first and self.options.suppress_blank:
            logits[:, self.blank] = -torch.inf
        self.first = False
        return logits

    def select(self, rows: list[int]) -> None:
        """Keep these rows, in this order (a row may repeat: one clip's beams). The
        cross-attention cache and encoder states are the same for all rows of a clip, so
        they are copied only when the rows' clips change."""
        clips = [self.clips[r] for r in rows]
        if rows == list(range(len(self.clips))):
            return
        index = torch.tensor(rows, device=self.device)
        if clips == self.clips:
            self.cache.self_attention_cache.batch_select_indices(index)
            return
        self.cache.batch_select_indices(index)
        self.encoder_states = self.encoder_states[index]
        self.clips = clips


@torch.inference_mode()
def decode(
    model: WhisperForConditionalGeneration,
    features: torch.Tensor,
    special: SpecialTokens,
    options: DecodingOptions | None = None,
    durations: list[float] | None = None,
) -> list[list[int]]:
    """Token ids (without prompt and <|endoftext|>) for a batch of log-mel `features`, by
    greedy decoding (beam_size 1) or beam search; `durations` (seconds of audio per clip)
    set the per-clip token limits."""
    options = options or DecodingOptions()
    if options.beam_size == 1:
        return greedy_decode(model, features, special, options, durations)
    return beam_search(model, features, special, options, durations)


@torch.inference_mode()
def greedy_decode(
    model: WhisperForConditionalGeneration,
    features: torch.Tensor,
    special: SpecialTokens,
    options: DecodingOptions | None = None,
    durations: list[float] | None = None,
) -> list[list[int]]:
    """Greedy token ids (without prompt and <|endoftext|>) for a batch of log-mel
    `features`; `durations` (seconds of audio per clip) set the per-clip token limits."""
    options = options or DecodingOptions()
    state = DecoderState(model, features, special, options)
    batch = features.shape[0]
    inputs = torch.tensor([special.prefix] * batch)  # row r of `inputs`: clip state.clips[r]
    limits = options.token_limits(durations, batch)
    out: list[list[int]] = [[] for _ in range(batch)]
    active = [i for i in range(batch) if limits[i] > 0]  # clips still decoding
    while active:
        rows = [state.clips.index(clip) for clip in active]
        state.select(rows)  # drops the rows of finished clips
        tokens = state.logits(inputs[rows]).argmax(dim=-1)
        going = []
        for clip, token in zip(active, tokens.tolist(), strict=True):
            keep = ending(out[clip], token, limits[clip], special.eot, options)
            if keep is None:
                out[clip].append(token)
                going.append(clip)
            else:
                out[clip] = [*out[clip], token][:keep]
        active, inputs = going, tokens[:, None]
    return out


# --- beam search -------------------------------------------------------------------------


def rank_score(logprob: float, length: int, length_penalty: float | None) -> float:
    """Whisper's `MaximumLikelihoodRanker`: the sum log-probability of a finished sequence of
    `length` tokens (<|endoftext|> not counted) over its length, or over the penalty
    ((5 + length) / 6) ** length_penalty of Google's NMT system."""
    if length_penalty is None:
        return logprob / length if length else -math.inf
    return logprob / ((5 + length) / 6) ** length_penalty


@dataclass(frozen=True)
class Beam:
    tokens: tuple[int, ...] = ()
    sums: tuple[float, ...] = ()  # sum log-probability after each token

    @property
    def score(self) -> float:
        return self.sums[-1] if self.sums else 0.0


class BeamSearch:
    """The beams of a batch of clips, apart from the model. `step` takes the
    log-probabilities of every live beam (rows: the clips' beams in clip order) and returns
    the rows the next live beams extend, with their new tokens."""

    def __init__(self, options: DecodingOptions, eot: int, limits: list[int]) -> None:
        self.options, self.eot, self.limits = options, eot, limits
        self.beams = [[Beam()] if limit > 0 else [] for limit in limits]
        self.finished: list[dict[tuple[int, ...], float]] = [{} for _ in limits]
        self.max_candidates = max(1, round(options.beam_size * options.patience))

    @property
    def rows(self) -> list[int]:
        """The clip of each live beam, in row order."""
        return [clip for clip, beams in enumerate(self.beams) for _ in beams]

    def step(self, logprobs: torch.Tensor) -> tuple[list[int], list[int]]:
        k = min(self.options.beam_size + 1, logprobs.shape[-1])
        top, ids = (t.tolist() for t in logprobs.topk(k))
        sources, tokens, row = [], [], 0
        for clip, beams in enumerate(self.beams):
            candidates = [
                (beam.score + logprob, row + j, beam, token)
                for j, beam in enumerate(beams)
                for logprob, token in zip(top[row + j], ids[row + j], strict=True)
            ]
            row += len(beams)
            live = self._advance(clip, candidates) if beams else []
            self.beams[clip] = [beam for beam, _ in live]
            sources += [source for _, source in live]
            tokens += [beam.tokens[-1] for beam, _ in live]
        return sources, tokens

    def _advance(self, clip: int, candidates: list) -> list[tuple[Beam, int]]:
        """The clip's next live beams (with their source rows); finished candidates, best
        first, join the clip's finished ones until it has `max_candidates`."""
        live: list[tuple[Beam, int]] = []
        done: dict[tuple[int, ...], float] = {}
        for score, row, beam, token in sorted(candidates, key=lambda c: c[0], reverse=True):
            if score == -math.inf or len(live) == self.options.beam_size:
                break
            sums = (*beam.sums, score)
            keep = ending(list(beam.tokens), token, self.limits[clip], self.eot, self.options)
            if keep is None:
                live.append((Beam((*beam.tokens, token), sums), row))
            else:  # a cut tail's log-probability is not counted
                sequence = (*beam.tokens, token)[:keep]
                value = score if token == self.eot else sums[keep - 1]
                done[sequence] = max(value, done.get(sequence, -math.inf))
        finished = self.finished[clip]
        for sequence in sorted(done, key=done.__getitem__, reverse=True):
            if len(finished) >= self.max_candidates:
                break
            finished[sequence] = max(done[sequence], finished.get(sequence, -math.inf))
        return [] if len(finished) >= self.max_candidates else live

    def results(self) -> list[list[int]]:
        """Each clip's best finished sequence under `rank_score`."""
        penalty = self.options.length_penalty
        return [
            list(max(done, key=lambda s: rank_score(done[s], len(s), penalty))) if done else []
            for done in self.finished
        ]


@torch.inference_mode()
def beam_search(
    model: WhisperForConditionalGeneration,
    features: torch.Tensor,
    special: SpecialTokens,
    options: DecodingOptions | None = None,
    durations: list[float] | None = None,
) -> list[list[int]]:
    """Beam-search token ids (without prompt and <|endoftext|>) for a batch of log-mel
    `features`; `durations` (seconds of audio per clip) set the per-clip token limits."""
    options = options or DecodingOptions()
    state = DecoderState(model, features, special, options)
    search = BeamSearch(options, special.eot, options.token_limits(durations, len(features)))
    return run_beam_search(state, search, special.prefix)


def run_beam_search(state, search: BeamSearch, prefix: list[int]) -> list[list[int]]:
    """Drive `search` with a `DecoderState` (or anything with its `select` and `logits`):
    the encoder ran once per clip; its rows are copied to the clip's beams here."""
    sources = search.rows  # one row per clip to start with: the prompt
    inputs = torch.tensor([prefix] * len(search.beams))[sources]
    while sources:
        state.select(sources)
        logprobs = state.logits(inputs).double().log_softmax(dim=-1)  # float64: no new ties
        sources, tokens = search.step(logprobs)
        inputs = torch.tensor(tokens)[:, None]
    return search.results()
