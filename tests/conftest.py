"""Shared fixtures: real audio from ../shared/data when present, else the shipped quickstart."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from kidwhisper.config import resolve_path
from kidwhisper.data.sampling import batch_stream
from kidwhisper.training.run import Run

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SO762 = SHARED / "so762-kids"
QUICKSTART = resolve_path("bundled:quickstart")

needs_shared = pytest.mark.skipif(
    not (SO762 / "dev.jsonl").is_file(),
    reason=f"real child speech not found at {SO762} (CI has it; see ../shared/data/README.md)",
)
PEAK_DISK_GB = 3.0  # measured: 2.6 GB at the peak (three runs under torchrun, 2.3 GB)


def pytest_report_header(config) -> str:
    """Free disk where the tests write: with less than the peak, training tests fail."""
    tmp = tempfile.gettempdir()
    free = shutil.disk_usage(tmp).free / 1e9
    low = "" if free > PEAK_DISK_GB else "  LOW: training tests will fail for lack of space"
    return f"disk: {free:.1f} GB free in {tmp}; the suite needs about {PEAK_DISK_GB} GB{low}"


@pytest.fixture(scope="session")
def real_manifest() -> Path:
    """A manifest of real recorded child speech if available, else the synthetic quickstart."""
    if (SO762 / "dev.jsonl").is_file():
        return SO762 / "dev.jsonl"
    return QUICKSTART / "dev.jsonl"


@pytest.fixture(scope="session")
def tiny_en():
    """Bundled real tiny.en weights (converted from CTranslate2 once, then cached)."""
    from kidwhisper.models.factory import load_model

    return load_model("bundled:tiny.en")


@pytest.fixture(scope="session")
def random_tiny():
    """The real multilingual tiny architecture with random weights."""
    from kidwhisper.models.factory import WhisperModel

    return WhisperModel("tiny", pretrained="random").load()


def check_model_card(folder: Path):
    """The folder's README.md as huggingface_hub reads it: a model card whose metadata and
    (when present) model-index parse. Returns the `ModelCard`."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0" and "kidwhisper" in card.data.tags
    index = card.data.to_dict().get("model-index")
    if index:
        _, results = model_index_to_eval_results(index)
        assert results and all(r.metric_type == "wer" for r in results)
    return card


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every tensor in `model`'s state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_steps(run: Run, n: int, batches=None):
    """`n` optimiser steps of `run` (each must succeed); returns the batch stream to go on."""
    batches = batches or batch_stream(run.loader, run.sampler, run.position, run.problems)
    run.model.train()
    for _ in range(n):
        assert run.train_step(batches)[2]
    return batches
