"""Model cards: the `README.md` of every model folder kidwhisper writes, in Hugging Face format.

A card is YAML metadata (base model, language, the base's license, tags, training data by
manifest name, and a `model-index` with the dev WER overall and per age bucket), then Markdown:
how the model was made, the training config, the data counts, the evaluation table, the audio
context the model expects, and how to load it in transformers and faster-whisper.

This module measures nothing: the caller passes the figures in as plain data (`CardFacts`).
`huggingface_hub.ModelCard.load` reads the result (tests/test_model_card.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kidwhisper.config import context_step_seconds, is_batch_context
from kidwhisper.files import atomic_write_text
from kidwhisper.models.bundled import BUNDLED_PREFIX
from kidwhisper.models.short_input import CONFIG_KEY
from kidwhisper.models.variants import VARIANTS

CARD = "README.md"
CONFIG_COPY = "kidwhisper.yaml"  # the resolved training config kept beside the weights
# Every model here starts from OpenAI's Whisper weights, released under Apache 2.0.
BASE_LICENSE = "apache-2.0"
TAGS = ["whisper", "automatic-speech-recognition", "children-speech", "kidwhisper"]


@dataclass
class CardFacts:
    """What a card says about one model folder; all plain data."""

    name: str
    origin: str  # one or two sentences: how the model was made
    config: dict | None = None  # the resolved kidwhisper config (kidwhisper.yaml), if any
    # {"data": manifest, "wer": x, "wer_by_age": {bucket: x}, "utterances": n}; None: not scored
    evaluation: dict | None = None
    counts: dict[str, object] = field(default_factory=dict)  # label -> figure, in order


def read_config(folder: str | Path) -> dict | None:
    """The kidwhisper config saved in a model folder (`kidwhisper.yaml`), or None."""
    path = Path(folder) / CONFIG_COPY
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None


def manifest_name(path: str) -> str:
    """A manifest named as `<folder>/<stem>`: `../data/so762-kids/dev.jsonl` -> `so762-kids/dev`."""
    p = Path(path.removeprefix(BUNDLED_PREFIX))
    return f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem


def _model_json(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _variant(config: dict | None, model_json: dict) -> str | None:
    """The variant from the kidwhisper config, else from the architecture in config.json."""
    if config and config.get("model", {}).get("variant"):
        return config["model"]["variant"]
    for name, v in VARIANTS.items():
        if (v.d_model, v.encoder_layers, v.decoder_layers, v.vocab_size) == (
            model_json.get("d_model"), model_json.get("encoder_layers"),
            model_json.get("decoder_layers"), model_json.get("vocab_size"),
        ):  # fmt: skip
            return name
    return None


def base_model(config: dict | None, variant: str | None) -> str | None:
    """The Hub id of the starting model: bundled weights are OpenAI's own, converted; a local
    folder, random initialisation or an unknown origin (no config) has none."""
    if config is None:
        return None
    pretrained = config.get("model", {}).get("pretrained")
    if variant and (pretrained is None or pretrained.startswith(BUNDLED_PREFIX)):
        return f"openai/whisper-{variant}"
    if not pretrained or pretrained == "random" or Path(pretrained).expanduser().exists():
        return None
    return pretrained if pretrained.count("/") == 1 else None


def _metrics(evaluation: dict) -> list[dict]:
    pairs = [("WER", evaluation.get("wer"))]
    pairs += [(f"WER (age {k})", v) for k, v in (evaluation.get("wer_by_age") or {}).items()]
    return [
        {"type": "wer", "value": round(100 * v, 2), "name": name}
        for name, v in pairs
        if v is not None and not math.isnan(v)
    ]


def metadata(facts: CardFacts, variant: str | None) -> dict:
    """The card's YAML block (Hugging Face model-card metadata)."""
    config = facts.config or {}
    english = bool(variant and variant.endswith(".en"))
    meta: dict = {"language": ["en" if english else config.get("model", {}).get("language", "en")]}
    meta["license"] = BASE_LICENSE
    if base := base_model(facts.config, variant):
        meta["base_model"] = base
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "automatic-speech-recognition"
    meta["tags"] = list(TAGS)
    if train := config.get("data", {}).get("train"):
        meta["datasets"] = [manifest_name(p) for p in train]
    ev = facts.evaluation
    if ev and (metrics := _metrics(ev)):
        data = manifest_name(ev.get("data") or "dev")
        result = {
            "task": {"type": "automatic-speech-recognition", "name": "Speech Recognition"},
            "dataset": {"name": data, "type": data, "split": Path(data).name},
            "metrics": metrics,
        }
        meta["model-index"] = [{"name": facts.name, "results": [result]}]
    return meta


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def _evaluation_md(ev: dict | None, folder: Path) -> list[str]:
    if not ev:
        return [
            "Not scored when this folder was written. Score it with the competition metric:",
            "",
            f"    kidwhisper evaluate {folder} --data path/to/dev.jsonl",
        ]
    rows = [f"| all | {_pct(ev.get('wer'))} |"]
    rows += [f"| age {k} | {_pct(v)} |" for k, v in (ev.get("wer_by_age") or {}).items()]
    data = f"`{ev['data']}`" if ev.get("data") else "the dev manifest"
    return [
        f"Greedy decoding on {data} ({ev.get('utterances', '?')} utterances), scored with the "
        "competition's WER (corpus WER after Whisper's English normaliser with the "
        "competition's spelling map).",
        "",
        "| subset | WER |",
        "|---|---|",
        *rows,
    ]


def _context_md(context: object) -> list[str]:
    if context in (None, "full"):
        return ["Whisper's own 30 s window: clips are padded to 30 s, as every Whisper tool does."]
    if is_batch_context(context):
        shape = f"the batch's longest clip, rounded up to {context_step_seconds(context):g} s"
    else:
        shape = f"{context} s"
    return [
        f"Trained on short encoder inputs ({shape}; `{CONFIG_KEY}: {context}` in config.json).",
        "kidwhisper (`evaluate`, `transcribe`, submissions) reads that key and feeds the same",
        "input. transformers' `generate` and faster-whisper always pad to 30 s, which this",
        "model did not see in training: measure its WER that way before relying on it.",
    ]


def _usage_md(folder: Path) -> list[str]:
    return [
        "transformers:",
        "",
        "```python",
        "from transformers import WhisperForConditionalGeneration, WhisperProcessor",
        "",
        f'processor = WhisperProcessor.from_pretrained("{folder}")',
        f'model = WhisperForConditionalGeneration.from_pretrained("{folder}")',
        "# audio: 16 kHz mono float array",
        'features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features',
        "print(processor.batch_decode(model.generate(features), skip_special_tokens=True)[0])",
        "```",
        "",
        "faster-whisper (CTranslate2), after `kidwhisper export-ct2 "
        f"{folder} {folder}-ct2 --quantization int8`:",
        "",
        "```python",
        "from faster_whisper import WhisperModel",
        "",
        f'model = WhisperModel("{folder}-ct2", device="cpu", compute_type="int8")',
        'segments, _ = model.transcribe("clip.flac", language="en", beam_size=1)',
        'print(" ".join(s.text.strip() for s in segments))',
        "```",
        "",
        f"kidwhisper: `kidwhisper transcribe {folder} clip.flac --out clip.jsonl`.",
    ]


def render_card(facts: CardFacts, folder: str | Path) -> str:
    """The card's text: YAML metadata between `---` lines, then Markdown."""
    folder = Path(folder)
    model_json = _model_json(folder)
    variant = _variant(facts.config, model_json)
    meta = yaml.safe_dump(metadata(facts, variant), sort_keys=False, allow_unicode=True)
    md = [f"---\n{meta}---", "", f"# {facts.name}", "", facts.origin, ""]
    md += [f"Whisper {variant or '(variant unknown)'}, adapted to children's speech with "
           "kidwhisper. License of the base weights (OpenAI Whisper): Apache 2.0.", ""]  # fmt: skip
    md += ["## Evaluation", "", *_evaluation_md(facts.evaluation, folder), ""]
    if facts.counts:
        md += ["## Data", "", "| | |", "|---|---|"]
        md += [f"| {k} | {v} |" for k, v in facts.counts.items()] + [""]
    md += ["## Audio context", "", *_context_md(model_json.get(CONFIG_KEY)), ""]
    md += ["## How to use", "", *_usage_md(folder), ""]
    if facts.config:
        dumped = yaml.safe_dump(facts.config, sort_keys=False, allow_unicode=True)
        md += ["## Training config", "", "```yaml", dumped.rstrip(), "```", ""]
    return "\n".join(md)


def write_model_card(folder: str | Path, facts: CardFacts) -> Path:
    """Write `folder/README.md` atomically (a temp file beside it, then renamed)."""
    return atomic_write_text(Path(folder) / CARD, render_card(facts, folder))
