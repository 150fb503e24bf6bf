"""`kidwhisper average`: element-wise means that plain transformers loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import WhisperForConditionalGeneration

from kidwhisper.cli.main import main
from kidwhisper.config import ConfigError, load_config
from kidwhisper.models.averaging import AveragingError, average_checkpoints
from kidwhisper.models.factory import WhisperModel
from kidwhisper.training.experiments import run_experiment

from .conftest import QUICKSTART, REPO, check_model_card

FC1 = "model.decoder.layers.0.fc1.weight"


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
    card = check_model_card(tmp_path / "soup")
    assert card.data.eval_results is None and "`kidwhisper average`" in card.text


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
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        average_checkpoints([empty], tmp_path / "x")
    tiny_en = _save(tmp_path, "tiny.en", 0, "tiny_en")  # same tensors, one vocabulary row less
    with pytest.raises(AveragingError, match="not the same architecture"):
        average_checkpoints([two_models[0], tiny_en], tmp_path / "x")


def test_average_last_needs_that_many_kept_checkpoints():
    with pytest.raises(ConfigError, match=r"training\.average_last: 3 needs .*keep_checkpoints"):
        load_config(None, ["training.average_last=3", "training.keep_checkpoints=2"])


@pytest.mark.integration
@pytest.mark.slow
def test_run_with_average_last_ends_on_the_mean_of_its_last_checkpoints(
    real_manifest: Path, tmp_path: Path
):
    overrides = [
        "model.variant=tiny", "model.pretrained=random",
        f"data.train=[{QUICKSTART / 'train.jsonl'}]", f"data.eval={real_manifest}",
        "data.max_eval_samples=3", "data.num_workers=0", "training.batch_size=4",
        "training.max_steps=3", "training.eval_every_steps=1", "training.warmup_steps=0",
        "training.lr=1e-3", "training.keep_checkpoints=3", "training.average_last=2",
        "training.gradient_checkpointing=false", "evaluation.max_new_tokens=8",
        "evaluation.before_training=false", f"output.checkpoints_dir={tmp_path / 'ckpt'}",
        f"output.experiments_dir={tmp_path / 'exp'}", "output.name=run",
    ]  # fmt: skip
    metrics = run_experiment(load_config(REPO / "configs/quickstart.yaml", overrides))
    run = tmp_path / "ckpt" / "run"
    last = [load_file(run / f"step_000000{s}" / "model" / "model.safetensors") for s in (2, 3)]
    final = load_file(run / "final" / "model.safetensors")
    for key in final:
        torch.testing.assert_close(final[key], (last[0][key] + last[1][key]) / 2, atol=1e-7, rtol=0)
    assert not torch.equal(last[0][FC1], last[1][FC1])
    average = metrics["eval_average"]
    assert average["steps"] == [2, 3] and average["utterances"] == 3 and average["wer"] >= 0
    folder = tmp_path / "exp" / "run"
    assert json.loads((folder / "metrics.json").read_text())["eval_average"] == average
    assert (folder / "predictions_average.jsonl").read_text().count("\n") == 3
    assert "| overall | n/a | " in (folder / "results.md").read_text()
    assert "average of steps [2, 3]" in (folder / "results.md").read_text()
    card = check_model_card(run / "final")  # the run's card, with the averaged model's WER
    assert card.data.eval_results[0].metric_value == round(100 * average["wer"], 2)
    assert "The mean of the checkpoints of steps [2, 3]" in card.text
