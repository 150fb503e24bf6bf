"""`kidwhisper average`: element-wise means that plain transformers loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import WhisperForConditionalGeneration

from kidwhisper.cli import main
from kidwhisper.models import WhisperModel
from kidwhisper.models.averaging import AveragingError, average_checkpoints


def _save(tmp_path: Path, variant: str, seed: int, name: str) -> Path:
    return WhisperModel(variant, pretrained="random", seed=seed).load().save(tmp_path / name)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("soup")
    return _save(tmp, "tiny", 1, "a"), _save(tmp, "tiny", 2, "b")


def test_average_is_the_element_wise_mean_and_loads_in_transformers(two_models, tmp_path):
    a, b = two_models
    assert main(["average", str(a), str(b), "--out", str(tmp_path / "soup")]) == 0
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    soup = WhisperForConditionalGeneration.from_pretrained(tmp_path / "soup")
    state = soup.state_dict()
    assert not torch.equal(wa["model.encoder.conv1.weight"], wb["model.encoder.conv1.weight"])
    for key in wa:
        torch.testing.assert_close(state[key], (wa[key] + wb[key]) / 2, rtol=0, atol=1e-7)
    assert soup.proj_out.weight.data_ptr() == soup.model.decoder.embed_tokens.weight.data_ptr()
    record = json.loads((tmp_path / "soup" / "averaged_from.json").read_text())
    assert record["weights"] == [1.0, 1.0] and len(record["sources"]) == 2


def test_weighted_average_and_training_checkpoint_folders(two_models, tmp_path):
    a, b = two_models
    step = tmp_path / "run" / "step_0000010"  # a training checkpoint holds its model in model/
    step.mkdir(parents=True)
    (step / "model").symlink_to(b, target_is_directory=True)
    out = average_checkpoints([a, step], tmp_path / "w", weights=[3, 1])
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    got = load_file(out / "model.safetensors")
    key = "model.decoder.layers.0.fc1.weight"
    torch.testing.assert_close(got[key], 0.75 * wa[key] + 0.25 * wb[key], rtol=0, atol=1e-7)


def test_different_architectures_are_refused(two_models, tmp_path):
    base = _save(tmp_path, "base", 0, "base")
    with pytest.raises(AveragingError, match="tensors differ"):
        average_checkpoints([two_models[0], base], tmp_path / "x")
    with pytest.raises(AveragingError, match="one non-negative weight per checkpoint"):
        average_checkpoints(list(two_models), tmp_path / "x", weights=[1.0])
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        average_checkpoints([tmp_path], tmp_path / "x")
    tiny_en = _save(tmp_path, "tiny.en", 0, "tiny_en")  # same tensors, one vocabulary row less
    with pytest.raises(AveragingError, match="not the same architecture"):
        average_checkpoints([two_models[0], tiny_en], tmp_path / "x")
