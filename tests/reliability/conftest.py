"""Bad inputs built on the fly from real audio, by the same code as the 5%-corrupted run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from ..conftest import QUICKSTART, REPO


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


corrupt = _load_script("corrupt_manifest")


@pytest.fixture(scope="session")
def good_rows(real_manifest: Path) -> list[dict]:
    """The first real entries, with absolute audio paths."""
    lines = real_manifest.read_text(encoding="utf-8").splitlines()[:6]
    rows = [json.loads(line) for line in lines]
    for row in rows:
        row["audio_path"] = str((real_manifest.parent / row["audio_path"]).resolve())
    return rows


def build_manifest(folder: Path, good: list[dict], kinds: list) -> tuple[Path, list]:
    """`folder/train.jsonl`: one entry turned by each kind, then the good entries; returns
    it and the reasons the kinds expect (None for entries that must be kept)."""
    audio = folder / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    lines, expected = [], []
    for n, kind in enumerate(kinds):
        row = {**good[n % len(good)], "utterance_id": f"U_{kind.__name__}"}
        for line, reason in kind(row, Path("/"), audio):
            lines.append(line)
            expected.append(reason)
    lines += [json.dumps(row).encode() for row in good]
    manifest = folder / "train.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    return manifest, expected


@pytest.fixture
def quickstart_config(tmp_path: Path):
    """Overrides for a short real training run: random tiny on the shipped clips."""
    return [
        "model.variant=tiny", "model.pretrained=random",
        f"data.train=[{QUICKSTART / 'train.jsonl'}]", "data.eval=null", "data.num_workers=0",
        "training.batch_size=4", "training.gradient_accumulation_steps=1",
        "training.max_steps=4", "training.warmup_steps=0", "training.lr=1e-4",
        "training.gradient_checkpointing=false", "evaluation.before_training=false",
        f"output.checkpoints_dir={tmp_path / 'ckpt'}",
        f"output.experiments_dir={tmp_path / 'exp'}", "output.name=run",
    ]  # fmt: skip
