"""Training: the schedule, a few real steps that lower the loss, and the experiment folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kidwhisper.cli.main import main
from kidwhisper.config import load_config
from kidwhisper.data.dataset import SpeechDataset, WhisperCollator, read_manifest
from kidwhisper.models.factory import WhisperModel
from kidwhisper.training.loop import train
from kidwhisper.training.run import Run
from kidwhisper.training.schedule import lr_lambda

from .conftest import REPO, check_model_card, state_copy, train_steps
from .test_lora import _overrides


@torch.inference_mode()
def mean_loss(wm: WhisperModel, batches: list[dict]) -> float:
    """Teacher-forced loss over prepared batches, measured outside the training loop."""
    losses = [
        wm.model(
            input_features=b["input_features"],
            decoder_input_ids=b["decoder_input_ids"],
            labels=b["labels"],
        ).loss.item()
        for b in batches
    ]
    return sum(losses) / len(losses)


def test_schedule_warms_up_then_decays():
    f = lr_lambda("linear", warmup=4, total=14)
    assert [round(f(s), 2) for s in (0, 1, 3)] == [0.25, 0.5, 1.0]
    assert f(4) == 1.0 and f(9) == 0.5 and f(14) == 0.0
    cosine = lr_lambda("cosine", warmup=0, total=10)
    assert cosine(0) == 1.0 and abs(cosine(5) - 0.5) < 1e-9 and cosine(10) < 1e-12
    assert lr_lambda("constant", warmup=2, total=10)(9) == 1.0


def _config(manifest: Path, tmp_path: Path, *extra: str):
    return load_config(
        REPO / "configs/quickstart.yaml",
        [
            f"data.train={manifest}",
            f"data.eval={manifest}",
            f"output.experiments_dir={tmp_path / 'experiments'}",
            f"output.checkpoints_dir={tmp_path / 'checkpoints'}",
            *extra,
        ],
    )


@pytest.mark.integration
def test_a_few_steps_lower_the_loss_on_real_audio(real_manifest: Path, tmp_path: Path):
    config = _config(
        real_manifest,
        tmp_path,
        "data.max_train_samples=4",
        "data.num_workers=0",
        "training.batch_size=4",
        "training.max_steps=4",
        "training.lr=1e-4",
        "training.warmup_steps=0",
        "training.lr_schedule=constant",
        "training.gradient_checkpointing=true",
        "evaluation.before_training=false",
        "data.max_eval_samples=2",
    )
    wm, state = train(config)
    losses = [point["loss"] for point in state.loss_curve]
    assert len(losses) == 4
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(torch.isfinite(torch.tensor(losses)))
    # The loss on the same clips, measured independently of the loop, is low too.
    utterances = read_manifest(real_manifest)[:4]
    dataset = SpeechDataset(utterances, wm.n_mels, wm.tokenizer, wm.special)
    batch = WhisperCollator(wm.special)([dataset[i] for i in range(4)])
    assert mean_loss(wm, [batch]) < losses[0]
    assert wm.model.config.use_cache is False


@pytest.mark.integration
def test_cli_train_writes_the_experiment_folder(real_manifest: Path, tmp_path: Path, capsys):
    args = [
        "train",
        str(REPO / "configs/quickstart.yaml"),
        f"data.train={real_manifest}",
        f"data.eval={real_manifest}",
        "data.max_train_samples=2",
        "data.max_eval_samples=2",
        "data.num_workers=0",
        "training.batch_size=2",
        "training.max_steps=1",
        f"output.experiments_dir={tmp_path / 'experiments'}",
        f"output.checkpoints_dir={tmp_path / 'checkpoints'}",
        "output.name=e2e",
    ]
    assert main(args) == 0
    folder = tmp_path / "experiments" / "e2e"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["steps"] == 1 and metrics["variant"] == "tiny.en"
    assert metrics["eval_before"]["wer"] >= 0 and metrics["eval_after"]["wer"] >= 0
    assert metrics["eval_after"]["utterances"] == 2
    assert metrics["peak_memory_mb"] > 0 and metrics["wall_seconds"] > 0
    resolved = load_config(folder / "config.yaml")
    assert resolved.training.max_steps == 1 and resolved.output.name == "e2e"
    assert "| overall |" in (folder / "results.md").read_text()
    model_dir = tmp_path / "checkpoints" / "e2e" / "final"
    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir / "kidwhisper.yaml").is_file()
    card = check_model_card(model_dir)
    assert card.data.base_model == "openai/whisper-tiny.en"
    wer = {r.metric_name: r.metric_value for r in card.data.eval_results}["WER"]
    assert wer == round(100 * metrics["eval_after"]["wer"], 2)
    assert "fine-tuned WER" in capsys.readouterr().out
    # A second run with the same name refuses to clobber the first.
    assert main(args) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_dropout_and_label_smoothing_resume_exactly(tmp_path: Path):
    """Dropout's masks come from the global RNG, which a checkpoint restores: the resumed
    run draws the masks the uninterrupted one drew, and ends on the same weights."""
    extra = ("training.dropout=0.1", "training.label_smoothing=0.1")
    config = load_config(None, _overrides(tmp_path, *extra))
    run = Run(config)
    batches = train_steps(run, 2)
    run.save(None)
    train_steps(run, 1, batches)
    again = Run(config)
    assert again.resume() and again.state.step == 2
    train_steps(again, 1)
    expected, after = state_copy(run.model), state_copy(again.model)
    assert after.keys() == expected.keys()
    assert all(torch.equal(after[k], expected[k]) for k in expected)
