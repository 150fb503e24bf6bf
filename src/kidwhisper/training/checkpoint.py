"""Self-describing, atomic training checkpoints.

A checkpoint is a folder `checkpoints/<name>/step_0000120/` holding
- `model/`: the weights in plain transformers layout (safetensors), loadable on its own;
  a LoRA run's are merged, with the adapter itself in `adapter/` (models/lora.py);
- `trainer_state.pt`: optimizer, scheduler, grad scaler, sampler positions, RNG states,
  the step and the run's history (only tensors and plain values: loaded with
  `weights_only=True`);
- `meta.json`: step, dev WER, code version, time; `config.yaml`: the resolved config.

It is written into a hidden temporary folder and renamed into place, then `latest` (a small
text file, itself replaced atomically) is pointed at it: a crash at any moment leaves the
previous checkpoint as the latest, never a half-written one. The last `keep` checkpoints are
kept, plus the best by dev WER.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import kidwhisper

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
LATEST = "latest"
PREFIX = "step_"


def code_version() -> str:
    """kidwhisper version plus the git commit when run from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(kidwhisper.__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"{kidwhisper.__version__}+{commit}"


def rng_state() -> dict:
    """Every RNG's state as plain Python values (safe to gather across processes and to
    load with `weights_only=True`)."""
    kind, keys, *rest = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), *rest],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_checkpoint(
    root: Path,
    step: int,
    save_model,  # callable(folder) writing the model in transformers layout
    trainer_state: dict,
    meta: dict,
    config_yaml: str,
    keep: int,
) -> Path:
    """Write checkpoint `step` under `root` atomically and prune old ones."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:07d}"
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_model(tmp / "model")
        torch.save(trainer_state, tmp / STATE_FILE)
        (tmp / "meta.json").write_text(json.dumps({**meta, "time": time.time()}, indent=2))
        (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")
    except OSError as err:  # a full disk, a vanished folder: the latest stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        latest = latest_checkpoint(root)
        raise OSError(
            err.errno,
            f"could not write checkpoint step {step} to {root} ({err.strerror or err}); "
            f"the latest complete checkpoint is still {latest}",
        ) from err
    if final.exists():  # re-saving a step after a resume: replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text_atomic(root / LATEST, final.name + "\n")
    prune(root, keep)
    log.info("checkpoint saved: %s", final)
    return final


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and p.is_dir())


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint folder (`step_0000110`) was written at."""
    return int(path.name.removeprefix(PREFIX))


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / STATE_FILE).is_file():
            return candidate
    complete = [p for p in checkpoints(root) if (p / STATE_FILE).is_file()]
    return complete[-1] if complete else None


def _meta(path: Path) -> dict:
    try:
        return json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


def best_checkpoint(root: Path) -> Path | None:
    """The checkpoint with the lowest dev WER (the earliest on ties)."""
    scored = [(m["wer"], p) for p in checkpoints(root) if (m := _meta(p)).get("wer") is not None]
    return min(scored, key=lambda item: item[0])[1] if scored else None


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints and the best one."""
    every = checkpoints(root)
    protected = set(every[-keep:]) if keep > 0 else set()
    best = best_checkpoint(root)
    if best is not None:
        protected.add(best)
    for path in every:
        if path not in protected:
            shutil.rmtree(path, ignore_errors=True)


def load_trainer_state(path: Path) -> dict:
    """The training state of a checkpoint this project wrote (tensors and plain values only)."""
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
