"""Loading a config from YAML, with validation.

The schema itself (each section's dataclass and its defaults) is `kidwhisper.settings`,
re-exported here. A config file names what it changes; `load_config` rejects unknown keys
(suggesting the closest valid one), wrong types and impossible values, always naming the
file and the dotted key, before any heavy work starts.
"""

from __future__ import annotations

import copy
import typing
from importlib import resources
from pathlib import Path

import yaml
from transformers import WhisperConfig

from kidwhisper.models.bundled import BUNDLED, BUNDLED_PREFIX
from kidwhisper.models.variants import LINEAR_MODULES, VARIANTS, variant_of
from kidwhisper.schema import ConfigError as ConfigError  # callers import it from here
from kidwhisper.schema import build, fail, hint, plain_name_problem, read_config, set_key
from kidwhisper.settings import (
    BATCH,
    BATCH_STEP_SECONDS,
    FULL,
    MAX_CONTEXT_SECONDS,
    AugmentConfig,
    Config,
    DataConfig,
    EvaluationConfig,
    GainConfig,
    LoraConfig,
    ModelConfig,
    NoiseConfig,
    OutputConfig,
    PitchConfig,
    SpecAugmentConfig,
    SpeedConfig,
    TempoConfig,
    TrainingConfig,
    VtlpConfig,
    context_step_seconds,
    is_batch_context,
    parse_context,
)

__all__ = [
    "BATCH",
    "BATCH_STEP_SECONDS",
    "FULL",
    "MAX_CONTEXT_SECONDS",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvaluationConfig",
    "GainConfig",
    "LoraConfig",
    "ModelConfig",
    "NoiseConfig",
    "OutputConfig",
    "PitchConfig",
    "SpecAugmentConfig",
    "SpeedConfig",
    "TempoConfig",
    "TrainingConfig",
    "VtlpConfig",
    "context_step_seconds",
    "dump_config",
    "is_batch_context",
    "load_config",
    "parse_context",
    "resolve_path",
    "soup_member_configs",
    "source_index",
    "validate",
]


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
    _check_frozen_layers(config, source)
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
                "training.soup_seeds", "training.soup_members", "training.soup_jobs")  # fmt: skip


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
    base["training"].update(soup_seeds=[], soup_members=[], soup_jobs=1)
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


def _check_frozen_layers(config: Config, source: str) -> None:
    n, key = config.training.freeze_encoder_layers, "training.freeze_encoder_layers"
    layers = VARIANTS[config.model.variant].encoder_layers
    if n > layers:
        fail(source, key, f"{n}, but {config.model.variant} has {layers} encoder layers")
    if n and config.training.freeze == "encoder":
        fail(source, key, f"{n}, but training.freeze is 'encoder' (all of it): set one")
    if n and config.model.lora.rank:
        fail(source, key, f"{n}, but model.lora.rank is set: LoRA already freezes every "
             "weight but its adapters")  # fmt: skip


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
