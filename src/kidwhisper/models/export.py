"""transformers Whisper folders -> CTranslate2 folders that faster-whisper loads.

The reverse of `ct2.import_ct2`. The weights go through CTranslate2's own converter
(`ctranslate2.converters.TransformersConverter`, which loads the folder with transformers,
offline); the folder then gets what faster-whisper reads besides `model.bin`: the
`tokenizer.json` and the `preprocessor_config.json` (the number of mel bins).

ctranslate2 is optional: it is imported only when exporting (`pip install ctranslate2`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from transformers import WhisperTokenizerFast

from kidwhisper.data.audio import feature_extractor
from kidwhisper.errors import UserError
from kidwhisper.files import (
    atomic_folder,
    check_replace,
    looks_like_model,
    refuse_output_over_input,
)
from kidwhisper.models.averaging import model_folder
from kidwhisper.models.bundled import BUNDLED_PREFIX
from kidwhisper.models.ct2 import bundled_path, import_ct2

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "float16", "float32")
TOKENIZER, PREPROCESSOR = "tokenizer.json", "preprocessor_config.json"
LANGUAGE_TOKEN = re.compile(r"<\|[a-z]{2,3}\|>")


class ExportError(UserError, ValueError):
    """A source that cannot be exported (not a Whisper model, no tokenizer, no ctranslate2)."""


def source_folder(model: str | Path) -> Path:
    """The transformers Whisper folder of `model`: `bundled:<name>`, a model folder or a
    training checkpoint (checkpoints/<run>/step_N)."""
    if str(model).startswith(BUNDLED_PREFIX):
        try:
            return bundled_path(str(model).removeprefix(BUNDLED_PREFIX))
        except (ValueError, RuntimeError) as err:  # unknown name, its package not installed
            raise ExportError(str(err)) from err
    path = Path(model).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{model}: no such model folder")
    folder = model_folder(path)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{folder}: no config.json, not a transformers model folder")
    model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    if model_type != "whisper":
        raise ExportError(f"{folder}: holds a {model_type!r} model, not a Whisper model")
    if not any((folder / f).is_file() for f in (TOKENIZER, "vocab.json")):
        raise ExportError(f"{folder}: no tokenizer ({TOKENIZER} or vocab.json)")
    return folder


def import_ct2_folder(src: str | Path, out: str | Path, force: bool = False) -> Path:
    """`kidwhisper import-ct2`: `ct2.import_ct2` into a folder written beside `out` and
    renamed into place; an existing model folder is replaced only with `force`, and `out`
    may not be or hold `src`. (Here, not in ct2.py, which the submission ships.)"""
    src, out = Path(src), Path(out)
    refuse_output_over_input(out, [src], "import-ct2 OUT")
    with atomic_folder(out, force, looks_like_model, "model") as tmp:
        import_ct2(src, tmp)
    return out


def export_ct2(
    model: str | Path,
    out_dir: str | Path,
    quantization: str = "float16",
    force: bool = False,
) -> Path:
    """Convert a transformers Whisper model to a CTranslate2 folder at `out_dir`.

    `model` is a folder, a training checkpoint or `bundled:<name>`; `quantization` is the
    weight type CTranslate2 stores (int8, float16 or float32). An existing `out_dir` is
    replaced only with `force`, and only once the new folder is complete.
    """
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)}")
    out = Path(out_dir)
    check_replace(out, force, looks_like_model, "model")  # before minutes of converting
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError as err:
        raise ExportError(
            f"exporting to CTranslate2 needs ctranslate2: pip install ctranslate2 ({err})"
        ) from err
    src = source_folder(model)
    refuse_output_over_input(out, [src], "export-ct2 OUT")

    tokenizer = WhisperTokenizerFast.from_pretrained(src)
    with atomic_folder(out, force, looks_like_model, "model") as staging:
        target = staging / "model"  # the converter wants to create the folder itself
        TransformersConverter(str(src)).convert(str(target), quantization=quantization)
        _complete_config(target / "config.json", tokenizer)
        if (src / TOKENIZER).is_file():
            shutil.copy(src / TOKENIZER, target / TOKENIZER)
        else:  # a folder with only the slow tokenizer files
            tokenizer.backend_tokenizer.save(str(target / TOKENIZER))
        if (src / PREPROCESSOR).is_file():
            shutil.copy(src / PREPROCESSOR, target / PREPROCESSOR)
        else:
            n_mels = json.loads((src / "config.json").read_text())["num_mel_bins"]
            feature_extractor(n_mels).save_pretrained(target)
        for item in target.iterdir():
            os.replace(item, staging / item.name)
        target.rmdir()
    log.info("exported %s to %s (CTranslate2, %s)", src, out, quantization)
    return out


def _complete_config(path: Path, tokenizer: WhisperTokenizerFast) -> None:
    """Fill what the converter leaves empty for our folders: the language ids (it reads
    them from `additional_special_tokens`, which offline-built tokenizers do not list)
    and the suppression lists of a model saved without a generation config."""
    config = json.loads(path.read_text(encoding="utf-8"))
    vocab = tokenizer.get_vocab()
    if not config.get("lang_ids"):  # <|en|>, <|haw|>, <|iw|> (Hebrew)...
        config["lang_ids"] = sorted(i for t, i in vocab.items() if LANGUAGE_TOKEN.fullmatch(t))
    if config.get("suppress_ids") is None:
        config["suppress_ids"] = []
    if config.get("suppress_ids_begin") is None:
        blank = tokenizer.encode(" ", add_special_tokens=False)
        config["suppress_ids_begin"] = [*blank, tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
