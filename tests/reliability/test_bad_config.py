"""Bad configs fail when loaded, before any model or data is touched, naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kidwhisper.cli.main import main
from kidwhisper.config import ConfigError, load_config
from kidwhisper.data.dataset import read_manifest
from kidwhisper.data.sampling import make_sampler
from kidwhisper.models.ct2 import bundled_path

from ..conftest import QUICKSTART

TRAIN = QUICKSTART / "train.jsonl"

CASES = {
    "unknown key": ("training:\n  lrr: 1e-5\n", ["training.lrr", "did you mean 'lr'"]),
    "misspelt section": ("trainig:\n  lr: 1e-5\n", ["trainig", "did you mean 'training'"]),
    "wrong type": ("training:\n  batch_size: eight\n", ["training.batch_size", "must be int"]),
    "negative lr": ("training:\n  lr: -0.1\n", ["training.lr", "must be > 0"]),
    "window over 30 s": ("data:\n  max_seconds: 45\n", ["data.max_seconds", "must be <= 30"]),
    "empty range": (
        "data:\n  min_seconds: 5\n  max_seconds: 2\n",
        ["data.min_seconds", "must be below data.max_seconds"],
    ),
    "bad policy": ("data:\n  bad_entries: skp\n", ["data.bad_entries", "did you mean 'skip'"]),
    "bad on_oom": ("training:\n  on_oom: half\n", ["training.on_oom", "did you mean 'halve'"]),
    "missing manifest": ("data:\n  train: [nowhere/train.jsonl]\n", ["data.train[0]", "not found"]),
    "missing eval manifest": ("data:\n  eval: nowhere/dev.jsonl\n", ["data.eval", "not found"]),
    "missing model folder": (
        "model:\n  variant: tiny.en\n  pretrained: ./no/such/model\n",
        ["model.pretrained", "no such model folder"],
    ),
    "unknown variant": ("model:\n  variant: smal\n", ["model.variant", "did you mean 'small'"]),
    "bad audio context": ("model:\n  audio_context: batched\n", ["model.audio_context"]),
    "not a mapping": ("training: 3\n", ["training", "must be a mapping"]),
    "not YAML": ("training: [unclosed\n", ["not valid YAML"]),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_config_names_file_key_and_fix(name, tmp_path: Path, capsys):
    text, wanted = CASES[name]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    for part in wanted:
        assert part in message, message
    # The CLI prints that one line, no traceback, and exits 2 before loading anything.
    assert main(["train", str(path)]) == 2
    printed = capsys.readouterr().err
    assert printed.startswith("error: ") and wanted[0] in printed and "Traceback" not in printed


def test_checkpoint_of_another_variant_is_refused_from_its_config(tmp_path: Path):
    """model.variant small but the folder holds tiny.en: caught from config.json alone."""
    folder = bundled_path("tiny.en")
    path = tmp_path / "mismatch.yaml"
    path.write_text(f"model:\n  variant: small\n  pretrained: {folder}\n")
    with pytest.raises(ConfigError, match=r"model\.variant") as err:
        load_config(path)
    assert "'small'" in str(err.value) and "'tiny.en'" in str(err.value)


def test_checkpoint_with_other_mel_bins_is_refused(tmp_path: Path):
    """large-v3 has 128 mel bins: a folder with 80 cannot be it."""
    folder = bundled_path("tiny.en")
    with pytest.raises(ConfigError, match=r"model\.variant"):
        load_config(None, ["model.variant=large-v3", f"model.pretrained={folder}"])


def test_batch_that_cannot_be_split_across_processes(tmp_path: Path):
    clips = read_manifest(TRAIN)[:6]
    config = load_config(None, ["training.batch_size=4"])
    make_sampler(clips, config.training, rank=0, world_size=1)  # 6 clips fill one batch of 4
    with pytest.raises(ConfigError, match=r"training\.batch_size") as err:
        make_sampler(clips, config.training, rank=0, world_size=2)
    assert "4 x 2 processes" in str(err.value) and "fewer processes" in str(err.value)
