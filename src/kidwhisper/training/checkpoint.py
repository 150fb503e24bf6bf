"""Self-describing, atomic training checkpoints.

A checkpoint is a folder `checkpoints/<name>/step_0000120/` holding
- `model/`: the weights in plain transformers layout (safetensors), loadable on its own;
  a LoRA run's are merged, with the adapter itself in `adapter/` (`save_model`);
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import kidwhisper
from kidwhisper.config import Config
from kidwhisper.files import atomic_write_text
from kidwhisper.models import adapters
from kidwhisper.models.factory import WhisperModel

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
LATEST = "latest"
PREFIX = "step_"


@dataclass
class TrainState:
    """What a run has done so far: saved in every checkpoint, becomes metrics.json."""

    step: int = 0
    samples: int = 0
    loss_curve: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # entry -> [reason, message]
    bad_steps: int = 0  # skipped for a NaN/inf loss or gradient
    sampler: list[list[int]] = field(default_factory=list)  # per rank: [epoch, batches used]
    best_wer: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    train_utterances: int = 0
    train_seconds: float = 0.0
    audio_seconds: float = 0.0  # of training audio consumed (throughput = this / train time)
    peak_memory_mb: float = 0.0
    stopped_early: bool = False
    trainable_params: int = 0  # adapters only with LoRA; a frozen part's weights not at all
    total_params: int = 0


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
    atomic_write_text(root / LATEST, final.name + "\n")
    prune(root, keep)
    log.info("checkpoint saved: %s", final)
    return final


def looks_like_run(folder: Path) -> bool:
    """A run's checkpoint folder as training writes it: a `latest` marker, step folders,
    the final model or TensorBoard logs (what `train --overwrite` and `archive` may move)."""
    markers = (folder / LATEST, folder / "final", folder / "tensorboard")
    return any(p.exists() for p in markers) or any(
        p.name.startswith((PREFIX, f".{PREFIX}")) for p in folder.iterdir()
    )


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


# --- the model inside a checkpoint -----------------------------------------------------------


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_model(
    wm: WhisperModel, folder: Path, state: dict[str, torch.Tensor], config: Config
) -> Path:
    """Write `state` to `folder` as a plain transformers model; for a LoRA model merged, with
    the adapter folder beside it (`folder.parent / adapter`)."""
    if not adapters.has_adapters(state):
        return wm.save(folder, state_dict=state)
    lora = config.model.lora
    wm.save(folder, state_dict=adapters.merged_state(state, lora.alpha / lora.rank))
    adapter = folder.parent / adapters.ADAPTER_DIR
    adapters.peft_config(lora, config.training.freeze, config.pretrained).save_pretrained(adapter)
    weights = {adapters.PEFT_PREFIX + k.replace(f".{adapters.NAME}.", "."): v
               for k, v in state.items() if adapters.is_adapter_key(k)}  # fmt: skip
    save_file(_cpu(weights), adapter / adapters.ADAPTER_WEIGHTS, metadata={"format": "pt"})
    base = {k.replace(".base_layer.", "."): v for k, v in state.items() if ".base_layer." in k}
    save_file(_cpu(base), adapter / adapters.BASE_LAYERS, metadata={"format": "pt"})
    return folder


def checkpoint_state(step: Path) -> dict[str, torch.Tensor]:
    """The exact state a checkpoint was saved from: `model/`'s weights, unmerged again when
    the checkpoint holds an adapter (names as in a model with adapters injected)."""
    state = load_file(step / "model" / adapters.WEIGHTS)
    adapter = step / adapters.ADAPTER_DIR
    if not (adapter / adapters.ADAPTER_WEIGHTS).is_file():
        return state
    for key, tensor in load_file(adapter / adapters.BASE_LAYERS).items():
        prefix, leaf = key.rsplit(".", 1)
        del state[key]  # the merged weight (or the bias, under its plain name)
        state[f"{prefix}.base_layer.{leaf}"] = tensor
    for key, tensor in load_file(adapter / adapters.ADAPTER_WEIGHTS).items():
        prefix, leaf = key.removeprefix(adapters.PEFT_PREFIX).rsplit(".", 1)
        state[f"{prefix}.{adapters.NAME}.{leaf}"] = tensor
    return state
