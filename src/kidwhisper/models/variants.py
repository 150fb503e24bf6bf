"""The registry of Whisper variants: their real dimensions, as published with openai/whisper.

Every size-dependent number in kidwhisper (mel bins, vocabulary, widths, memory estimates)
comes from this table, so no variant is hard-coded anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import WhisperConfig

# Vocabulary sizes of the three tokenizer families.
VOCAB_ENGLISH = 51864  # *.en models: GPT-2 vocabulary, no language or task tokens used
VOCAB_MULTILINGUAL = 51865  # tiny ... large-v2: 99 languages
VOCAB_V3 = 51866  # large-v3 and turbo: 100 languages (adds <|yue|>)

# Whisper's linear layers, by their transformers names (LoRA targets, model.lora).
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclass(frozen=True)
class Variant:
    """Architecture of one Whisper variant."""

    name: str
    d_model: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    n_mels: int
    vocab_size: int

    @property
    def english_only(self) -> bool:
        return self.vocab_size == VOCAB_ENGLISH

    @property
    def tokenizer_family(self) -> str:
        """'english', 'multilingual' or 'v3': which tokenizer (and special ids) it uses."""
        return {VOCAB_ENGLISH: "english", VOCAB_MULTILINGUAL: "multilingual", VOCAB_V3: "v3"}[
            self.vocab_size
        ]

    def hf_config(self, **overrides: object) -> WhisperConfig:
        """A transformers `WhisperConfig` with this variant's real architecture.

        Token ids (start, end, padding) are passed in `overrides`: they come from the tokenizer.
        """
        kwargs: dict[str, object] = dict(
            vocab_size=self.vocab_size,
            num_mel_bins=self.n_mels,
            d_model=self.d_model,
            encoder_layers=self.encoder_layers,
            decoder_layers=self.decoder_layers,
            encoder_attention_heads=self.heads,
            decoder_attention_heads=self.heads,
            encoder_ffn_dim=4 * self.d_model,
            decoder_ffn_dim=4 * self.d_model,
            max_source_positions=1500,
            max_target_positions=448,
        )
        kwargs.update(overrides)
        return WhisperConfig(**kwargs)


def _v(name: str, d: int, h: int, enc: int, dec: int, mels: int = 80, vocab: int = 0) -> Variant:
    if not vocab:
        vocab = VOCAB_ENGLISH if name.endswith(".en") else VOCAB_MULTILINGUAL
    return Variant(name, d, h, enc, dec, mels, vocab)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        _v("tiny.en", 384, 6, 4, 4),
        _v("tiny", 384, 6, 4, 4),
        _v("base.en", 512, 8, 6, 6),
        _v("base", 512, 8, 6, 6),
        _v("small.en", 768, 12, 12, 12),
        _v("small", 768, 12, 12, 12),
        _v("medium.en", 1024, 16, 24, 24),
        _v("medium", 1024, 16, 24, 24),
        _v("large", 1280, 20, 32, 32),  # large-v2 weights; v1 has the same shape
        _v("large-v2", 1280, 20, 32, 32),
        _v("large-v3", 1280, 20, 32, 32, mels=128, vocab=VOCAB_V3),
        _v("large-v3-turbo", 1280, 20, 32, 4, mels=128, vocab=VOCAB_V3),
    ]
}


def get_variant(name: str) -> Variant:
    """Look a variant up by its short name (`small`, `tiny.en`, `large-v3`...)."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown Whisper variant {name!r}; choose one of {sorted(VARIANTS)}"
        ) from None


def variant_of(config: WhisperConfig) -> Variant | None:
    """The variant whose architecture a transformers config has, or None if it matches none."""
    for v in VARIANTS.values():
        if (
            v.d_model == config.d_model
            and v.encoder_layers == config.encoder_layers
            and v.decoder_layers == config.decoder_layers
            and v.n_mels == config.num_mel_bins
            and v.vocab_size == config.vocab_size
        ):
            return v
    return None
