"""Config-driven model creation: the variant flows config -> factory -> `__init__` -> `load()`.

`ModelFactory(config).create()` returns a loaded `WhisperModel`: the transformers model,
its tokenizer and feature extractor, and the special ids derived from that tokenizer.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperTokenizerFast

from kidwhisper.config import FULL, parse_context
from kidwhisper.data.audio import feature_extractor
from kidwhisper.data.text import family_tokenizer, special_tokens
from kidwhisper.errors import UserError
from kidwhisper.models.bundled import BUNDLED, BUNDLED_PREFIX, get_bundled
from kidwhisper.models.ct2 import bundled_path
from kidwhisper.models.short_input import enable_short_input, record_context, recorded_context
from kidwhisper.models.variants import Variant, get_variant, variant_of

if TYPE_CHECKING:
    from kidwhisper.config import Config

log = logging.getLogger(__name__)

RANDOM = "random"
TIED_OUTPUT = "proj_out.weight"  # the output layer shares the token embedding; saved once


def load_state(model: WhisperForConditionalGeneration, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict that may leave out the tied output layer; anything else
    missing or unexpected is an error."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {TIED_OUTPUT}:
        raise ValueError(f"weights do not fit the model: {missing=}, {unexpected=}")


class WhisperModel:
    """A Whisper variant with its weights, tokenizer and special tokens.

    `pretrained` is a Hub id, a local transformers folder, `bundled:<name>` or `random`.
    `audio_context` is the encoder's input length (models/short_input.py); unset, a model keeps
    the one it was trained with, and a model without one gets Whisper's 30 s window.
    """

    def __init__(
        self,
        variant: str = "small",
        pretrained: str | None = None,
        language: str = "en",
        task: str = "transcribe",
        seed: int = 0,
        audio_context: str | float | None = None,
        dropout: float = 0.0,
    ) -> None:
        self.variant: Variant = get_variant(variant)
        self.audio_context = None if audio_context is None else parse_context(audio_context)
        self.pretrained = pretrained or f"openai/whisper-{variant}"
        self.language, self.task, self.seed = language, task, seed
        # Set on every load, whatever the source's config.json says: the caller decides.
        self.dropout = dropout
        self.model: WhisperForConditionalGeneration | None = None
        self.tokenizer: WhisperTokenizerFast | None = None

    # --- loading ---------------------------------------------------------------------------

    def load(self) -> WhisperModel:
        """Load weights and tokenizer from the source, then check they are the variant."""
        if self.pretrained == RANDOM:
            self.model, self.tokenizer = self._random()
        else:
            folder = self._resolve()
            self.model = WhisperForConditionalGeneration.from_pretrained(
                folder, dropout=self.dropout
            )
            self.tokenizer = WhisperTokenizerFast.from_pretrained(folder)
        self._check_architecture()
        enable_short_input(self.model)
        # The window these weights were trained in: Whisper's 30 s unless kidwhisper trained
        # them with another. A "before training" WER is only honest when measured in it.
        self.trained_context = recorded_context(self.model.config) or FULL
        if self.audio_context is None:
            self.audio_context = self.trained_context
        record_context(self.model.config, self.audio_context)  # saved with the weights
        self.special = special_tokens(
            self.tokenizer,
            not self.variant.english_only,
            self.model.config.vocab_size,
            self.language,
            self.task,
        )
        self.feature_extractor = feature_extractor(self.variant.n_mels)
        log.info(
            "loaded %s (%s, %.1fM parameters, audio context %s)",
            self.pretrained,
            self.variant.name,
            self.params / 1e6,
            self.audio_context,
        )
        return self

    def _resolve(self) -> str | Path:
        """A local folder or Hub id for `from_pretrained`."""
        if self.pretrained.startswith(BUNDLED_PREFIX):
            return bundled_path(self.pretrained.removeprefix(BUNDLED_PREFIX))
        local = Path(self.pretrained).expanduser()
        if local.is_dir():
            return local
        if local.exists() or self.pretrained.startswith((".", "/", "~")):
            raise FileNotFoundError(f"{self.pretrained}: not a transformers model folder")
        return self.pretrained  # a Hub id; needs the internet or a filled HF cache

    def _random(self) -> tuple[WhisperForConditionalGeneration, WhisperTokenizerFast]:
        tokenizer = family_tokenizer(self.variant.tokenizer_family, self.variant.vocab_size)
        ids = special_tokens(tokenizer, not self.variant.english_only, self.variant.vocab_size)
        config = self.variant.hf_config(
            decoder_start_token_id=ids.sot,
            eos_token_id=ids.eot,
            pad_token_id=ids.eot,
            bos_token_id=ids.eot,
            # WhisperConfig's default [220, 50256] is English-only's " " and end token.
            begin_suppress_tokens=[*tokenizer.encode(" ", add_special_tokens=False), ids.eot],
            dropout=self.dropout,
        )
        torch.manual_seed(self.seed)
        return WhisperForConditionalGeneration(config), tokenizer

    def _check_architecture(self) -> None:
        c, v = self.model.config, self.variant
        found = (c.d_model, c.encoder_layers, c.decoder_layers, c.num_mel_bins, c.vocab_size)
        wanted = (v.d_model, v.encoder_layers, v.decoder_layers, v.n_mels, v.vocab_size)
        if found != wanted:
            raise ValueError(
                f"model.variant is {v.name!r} (d_model, enc layers, dec layers, mels, vocab = "
                f"{wanted}) but {self.pretrained} has {found}: fix model.variant or pretrained"
            )

    # --- use -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def context(self, audio_context: str | float) -> Iterator[WhisperModel]:
        """Decode with another audio context inside the block (e.g. the model's own
        `trained_context` to score it before training), then restore the configured one."""
        saved, self.audio_context = self.audio_context, audio_context
        try:
            yield self
        finally:
            self.audio_context = saved

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def n_mels(self) -> int:
        return self.variant.n_mels

    def save(self, out: str | Path, state_dict: dict | None = None) -> Path:
        """Write a plain transformers folder (safetensors) that `from_pretrained` loads;
        `state_dict` replaces the model's own (e.g. gathered from FSDP shards)."""
        out = Path(out)
        self.model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        self.feature_extractor.save_pretrained(out)
        return out


class ModelFactory:
    """Builds the `WhisperModel` a config describes; nothing about the variant is fixed here."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def create(self) -> WhisperModel:
        m = self.config.model
        return WhisperModel(
            variant=m.variant,
            pretrained=self.config.pretrained,
            language=m.language,
            task=m.task,
            seed=self.config.training.seed,
            audio_context=m.audio_context,
            dropout=self.config.training.dropout,
        ).load()


def load_model(
    source: str,
    variant: str | None = None,
    audio_context: str | float | None = None,
    language: str = "en",
    task: str = "transcribe",
) -> WhisperModel:
    """Load any source without a config; the variant is read from the weights when unset.
    The packaged submission's main.py loads its model through here too. A source that
    cannot load is a one-line `ModelSourceError` (suggesting close names), never a
    traceback from the Hub client."""
    check_source(source)
    try:
        if variant is None:
            variant = _detect_variant(source)
        return WhisperModel(
            variant, source, language=language, task=task, audio_context=audio_context
        ).load()
    except OSError as err:
        if isinstance(err, UserError) or Path(source).expanduser().exists():
            raise
        raise ModelSourceError(
            f"{source}: not a model folder here, and not loadable as a Hugging Face Hub id "
            f"(offline, or not in the Hub cache); give a local folder or bundled:<name> "
            f"({', '.join(sorted(BUNDLED))})"
        ) from err


class ModelSourceError(UserError, FileNotFoundError):
    """A model source that is no folder here, no bundled model and no loadable Hub id."""


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_source(source: str) -> None:
    """Refuse, before any loading, a bundled name that does not exist or a local path that
    is not there (a Hub-shaped `owner/name` whose `owner` folder is not here is left to
    the Hub), with the closest names that do exist."""
    if source == RANDOM:
        return
    if source.startswith(BUNDLED_PREFIX):
        name = source.removeprefix(BUNDLED_PREFIX)
        if name not in BUNDLED:
            close = difflib.get_close_matches(name, list(BUNDLED), n=1)
            hint = f" (did you mean {BUNDLED_PREFIX}{close[0]}?)" if close else ""
            raise ModelSourceError(f"{source}: no bundled model {name!r}{hint}; "
                                   f"bundled: {', '.join(sorted(BUNDLED))}")  # fmt: skip
        return
    path = Path(source).expanduser()
    if path.exists() or (HUB_ID.fullmatch(source) and not path.parent.is_dir()):
        return
    close = _close_paths(path) + [
        f"{BUNDLED_PREFIX}{n}" for n in difflib.get_close_matches(source, list(BUNDLED), n=1)
    ]
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ModelSourceError(
        f"{source}: no such model folder{hint}; give a transformers model folder, a "
        f"checkpoint, bundled:<name> ({', '.join(sorted(BUNDLED))}) or a Hub id"
    )


def _close_paths(path: Path) -> list[str]:
    """Existing paths one typo away: the first missing part of `path` replaced by the
    closest name in the deepest folder that exists."""
    parts = path.parts
    for depth in range(len(parts) - 1, -1, -1):
        folder = Path(*parts[:depth]) if depth else Path(".")
        if folder.is_dir():
            names = [p.name for p in folder.iterdir()]
            close = difflib.get_close_matches(parts[depth], names, n=2)
            return [str(folder / c / Path(*parts[depth + 1 :])) for c in close]
    return []


def _detect_variant(source: str) -> str:
    if source.startswith(BUNDLED_PREFIX):
        return get_bundled(source.removeprefix(BUNDLED_PREFIX)).variant
    found = variant_of(WhisperConfig.from_pretrained(source))
    if found is None:
        raise ValueError(f"{source}: its architecture matches no known Whisper variant")
    return found.name
