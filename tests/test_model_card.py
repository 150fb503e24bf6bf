"""Model cards (models/card.py): Hugging Face format that `huggingface_hub` reads back.

The cards written by `train`, `average` and `merge-lora` are checked in test_training.py,
test_averaging.py and test_lora.py with `conftest.check_model_card`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from kidwhisper.models.card import CardFacts, base_model, manifest_name, write_model_card

from .conftest import check_model_card

CONFIG = {
    "model": {"variant": "tiny.en", "pretrained": "bundled:tiny.en", "language": "en"},
    "data": {"train": ["../shared/data/so762-kids/train.jsonl", "bundled:quickstart/train.jsonl"]},
    "training": {"lr": 3e-5},
}
EVAL = {"data": "../shared/data/so762-kids/dev.jsonl", "wer": 0.2123, "utterances": 160,
        "wer_by_age": {"5-7": 0.25, "8-11": 0.1875, "12+": math.nan}}  # fmt: skip


def _folder(tmp_path: Path, context: str | None = "batch") -> Path:
    folder = tmp_path / "final"
    folder.mkdir()
    config = {"d_model": 384, "encoder_layers": 4, "decoder_layers": 4, "vocab_size": 51864}
    if context:
        config["kidwhisper_audio_context"] = context
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_card_metadata_and_model_index_parse(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    counts = {"training utterances": 880}
    write_model_card(folder, CardFacts("kids_tiny", "Fine-tuned.", CONFIG, EVAL, counts))
    card = check_model_card(folder)
    data = card.data
    assert data.base_model == "openai/whisper-tiny.en" and data.language == ["en"]
    assert data.datasets == ["so762-kids/train", "quickstart/train"]
    assert data.model_name == "kids_tiny"
    got = {r.metric_name: r.metric_value for r in data.eval_results}
    assert got == {"WER": 21.23, "WER (age 5-7)": 25.0, "WER (age 8-11)": 18.75}  # NaN: left out
    assert {r.dataset_name for r in data.eval_results} == {"so762-kids/dev"}
    text = card.text
    for part in ("## Evaluation", "| age 8-11 | 18.75% |", "| age 12+ | n/a |", "## Data",
                 "| training utterances | 880 |", "## Audio context", "short encoder inputs",
                 "WhisperForConditionalGeneration.from_pretrained", "faster_whisper",
                 "## Training config", "lr: 3.0e-05"):  # fmt: skip
        assert part in text, part
    assert not list(folder.glob(".*.tmp"))


def test_card_without_figures_or_config(tmp_path: Path) -> None:
    folder = _folder(tmp_path, context=None)
    write_model_card(folder, CardFacts("soup", "An average."))
    card = check_model_card(folder)
    assert card.data.eval_results is None and card.data.base_model is None
    assert "kidwhisper evaluate" in card.text and "30 s window" in card.text
    assert "Whisper tiny.en" in card.text  # read from the architecture in config.json
    assert ModelCard.load(folder / "README.md").data.license == "apache-2.0"


@pytest.mark.parametrize(
    ("pretrained", "expected"),
    [(None, "openai/whisper-base"), ("bundled:base", "openai/whisper-base"),
     ("random", None), ("someone/whisper-kids", "someone/whisper-kids"), ("./nowhere/x", None)],
)  # fmt: skip
def test_base_model(pretrained: str | None, expected: str | None) -> None:
    assert base_model({"model": {"pretrained": pretrained}}, "base") == expected


def test_manifest_name() -> None:
    assert manifest_name("/a/b/so762-kids/dev.jsonl") == "so762-kids/dev"
    assert manifest_name("bundled:quickstart/train.jsonl") == "quickstart/train"
    assert manifest_name("dev.jsonl") == "dev"
