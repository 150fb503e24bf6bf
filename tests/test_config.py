"""Config schema: defaults, the shipped configs, overrides and every class of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from kidwhisper.config import ConfigError, dump_config, load_config
from kidwhisper.models.factory import ModelFactory

from .conftest import REPO, SO762

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_default_variant_is_small():
    config = load_config()
    assert config.model.variant == "small"
    assert config.pretrained == "openai/whisper-small"
    assert ModelFactory(config).config.model.variant == "small"


def test_baseline_small_is_the_seed_default():
    config = load_config(REPO / "configs/baseline_whisper_small.yaml", check_paths=False)
    assert (config.model.name, config.model.variant) == ("whisper", "small")
    assert config.pretrained == "openai/whisper-small"
    assert (config.training.batch_size, config.training.gradient_accumulation_steps) == (12, 3)


def test_baseline_medium_is_kept():
    config = load_config(REPO / "configs/baseline_whisper_medium.yaml", check_paths=False)
    assert config.model.variant == "medium"
    assert config.pretrained == "openai/whisper-medium"
    assert (config.training.batch_size, config.training.gradient_accumulation_steps) == (8, 4)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path: Path):
    # Data paths are checked where the data is: always for bundled data, and for
    # ../shared/data wherever it exists (it does in CI).
    needs_shared_data = "../shared/data" in path.read_text()
    config = load_config(path, check_paths=not needs_shared_data or SO762.is_dir())
    assert config.output.name == path.stem


def test_resolved_config_round_trips(tmp_path: Path):
    config = load_config(REPO / "configs/quickstart.yaml", ["training.lr=2e-5"])
    again = load_config(write(tmp_path, dump_config(config)))
    assert again.to_dict() == config.to_dict()


def test_dotted_overrides():
    config = load_config(
        REPO / "configs/quickstart.yaml",
        ["training.lr=2e-5", "training.batch_size=4", "model.language=de"],
    )
    assert config.training.lr == 2e-5
    assert config.training.batch_size == 4
    assert config.model.language == "de"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "training:\n  batch_sise: 4\n",
            r"training\.batch_sise: unknown key \(did you mean 'batch_size'\?\)",
        ),
        ("trainng:\n  lr: 1.0e-5\n", r"trainng: unknown key \(did you mean 'training'\?\)"),
        ("training:\n  batch_size: 0\n", r"training\.batch_size: must be >= 1, got 0"),
        ("training:\n  lr: 0\n", r"training\.lr: must be > 0, got 0"),
        ("training:\n  lr: -1.0e-5\n", r"training\.lr: must be > 0"),
        ("training:\n  lr: fast\n", r"training\.lr: must be float, got str 'fast'"),
        ("training:\n  batch_size: 1.5\n", r"training\.batch_size: must be int, got float"),
        ("training:\n  batch_size: true\n", r"training\.batch_size: must be int, got bool"),
        (
            "model:\n  variant: smal\n",
            r"model\.variant: unknown variant 'smal' \(did you mean 'small'\?\)",
        ),
        ("model:\n  task: transcibe\n", r"model\.task: must be one of .*did you mean 'transcribe'"),
        ("data:\n  train: nowhere/train.jsonl\n", r"data\.train\[0\]: file not found: nowhere"),
        ("data:\n  eval: nowhere/dev.jsonl\n", r"data\.eval: file not found"),
        (
            "model:\n  variant: small\n  pretrained: bundled:tiny.en\n",
            r"model\.variant: 'small' but bundled:tiny\.en is 'tiny\.en'",
        ),
        ("model: [1, 2]\n", r"model: must be a mapping"),
        ("training: {lr: [1, 2}\n", r"not valid YAML"),
    ],
)
def test_invalid_configs_name_file_and_key(tmp_path: Path, text: str, expected: str):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_bad_override_names_key():
    with pytest.raises(ConfigError, match=r"training\.batch_size: must be >= 1"):
        load_config(None, ["training.batch_size=0"])
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load_config(None, ["training.batch_size"])


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
