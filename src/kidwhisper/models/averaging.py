"""Weight averaging ("model soup"): the mean of several checkpoints of one architecture.

The 1st place of the "On Top of Pasketti" Word track went from WER 0.1977 to 0.1885 by
averaging. Checkpoints can come from one run (the last K evaluations) or from several runs
(different seeds) that started from the same model; averaging unrelated models does not work.
LoRA adapters are merged first: a LoRA run's checkpoints hold the merged model already, and an
adapter folder is merged into its base (models/adapters.py) before it is averaged.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from kidwhisper.errors import UserError
from kidwhisper.files import atomic_folder, looks_like_model, refuse_output_over_input
from kidwhisper.models import adapters
from kidwhisper.models.card import CardFacts, read_config, write_model_card
from kidwhisper.models.factory import load_model, load_state

log = logging.getLogger(__name__)

WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"


class AveragingError(UserError, ValueError):
    """Checkpoints that cannot be averaged (different architectures, bad weights)."""


def model_folder(path: str | Path) -> Path:
    """The transformers folder of `path`: itself, or the `model/` of a training checkpoint."""
    path = Path(path)
    for folder in (path, path / "model"):
        if (folder / WEIGHTS).is_file() or (folder / INDEX).is_file():
            return folder
    raise FileNotFoundError(
        f"{path}: no {WEIGHTS} here or in {path / 'model'}; give a transformers model folder "
        "or a training checkpoint (checkpoints/<run>/step_N)"
    )


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers folder, single-file or sharded (safetensors only)."""
    if (folder / WEIGHTS).is_file():
        return load_file(folder / WEIGHTS)
    shards = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
    return {k: v for shard in shards for k, v in load_file(folder / shard).items()}


def average_weights(
    folders: list[Path], weights: list[float] | None = None
) -> dict[str, torch.Tensor]:
    """Weighted element-wise mean (weights normalised to sum to 1; uniform when unset)."""
    if not folders:
        raise AveragingError("nothing to average: give at least one checkpoint")
    weights = weights or [1.0] * len(folders)
    if len(weights) != len(folders) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise AveragingError(f"need one non-negative weight per checkpoint, got {weights}")
    total = sum(weights)
    mean: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for folder, weight in zip(folders, weights, strict=True):
        state = load_weights(folder)
        if mean and state.keys() != mean.keys():
            different = sorted(state.keys() ^ mean.keys())[:5]
            raise AveragingError(f"{folder}: its tensors differ from {folders[0]}'s: {different}")
        for key, tensor in state.items():
            if key in mean and tensor.shape != mean[key].shape:
                raise AveragingError(
                    f"{folder}: {key} has shape {tuple(tensor.shape)}, "
                    f"{folders[0]} has {tuple(mean[key].shape)}: not the same architecture"
                )
            dtypes.setdefault(key, tensor.dtype)
            term = tensor.to(torch.float64) * (weight / total)
            mean[key] = mean[key] + term if key in mean else term
    return {key: tensor.to(dtypes[key]) for key, tensor in mean.items()}


def average_checkpoints(
    sources: list[str | Path],
    out: str | Path,
    weights: list[float] | None = None,
    force: bool = False,
) -> Path:
    """Average `sources` into a plain transformers folder `out` (tokenizer, feature
    extractor and kidwhisper config taken from the first), with `averaged_from.json`.
    A source that is a LoRA adapter folder is merged into its base first. `out` is written
    beside and renamed into place; it may not be or hold a source, and an existing model
    folder is replaced only with `force`."""
    out = Path(out)
    refuse_output_over_input(out, sources, "average --out")
    is_adapter = [(Path(s) / adapters.ADAPTER_CONFIG).is_file() for s in sources]
    with (
        atomic_folder(out, force, looks_like_model, "model") as tmp,
        tempfile.TemporaryDirectory(prefix="kidwhisper-merged-") as scratch,
    ):
        folders = [
            adapters.merge_lora(s, Path(scratch) / str(i)) if adapter else model_folder(s)
            for i, (s, adapter) in enumerate(zip(sources, is_adapter, strict=True))
        ]
        state = average_weights(folders, weights)
        wm = load_model(str(folders[0]))
        try:
            load_state(wm.model, state)
        except ValueError as err:
            raise AveragingError(f"averaged weights: {err}") from err
        wm.save(tmp)
        if (folders[0] / "kidwhisper.yaml").is_file():
            shutil.copy(folders[0] / "kidwhisper.yaml", tmp / "kidwhisper.yaml")
        folders = [
            Path(s) if a else f for s, a, f in zip(sources, is_adapter, folders, strict=True)
        ]
        record = {"sources": [str(f) for f in folders], "weights": weights or [1.0] * len(folders)}
        (tmp / "averaged_from.json").write_text(json.dumps(record, indent=2) + "\n")
        _write_card(tmp, out.name, record)
    log.info("averaged %d checkpoints into %s", len(folders), out)
    return out


def _write_card(folder: Path, name: str, record: dict) -> None:
    """The model card of an averaged model: where its weights came from."""
    parts = zip(record["sources"], record["weights"], strict=True)
    origin = f"The weighted mean of {len(record['sources'])} checkpoints (`kidwhisper average`): "
    origin += ", ".join(f"`{f}` (weight {w:g})" for f, w in parts)
    counts = {"checkpoints averaged": len(record["sources"])}
    write_model_card(folder, CardFacts(name, origin, read_config(folder), counts=counts))
