"""training/objective.py: the summed loss and the KL anchor to the starting model (zero at the
start, positive once the model moves)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kidwhisper.data.dataset import SpeechDataset, WhisperCollator, read_manifest
from kidwhisper.data.sampling import batch_stream
from kidwhisper.training.objective import KLAnchor, summed_loss
from kidwhisper.training.run import Run

from .test_training import _config


@pytest.fixture(scope="module")
def batch(random_tiny, real_manifest: Path) -> dict:
    utterances = read_manifest(real_manifest)[:2]
    dataset = SpeechDataset(utterances, 80, random_tiny.tokenizer, random_tiny.special)
    return WhisperCollator(random_tiny.special)([dataset[0], dataset[1]])


def test_kl_is_zero_at_the_start_and_positive_after_a_step(random_tiny, batch):
    model = random_tiny.model
    anchor = KLAnchor(model, weight=1.0)
    objective, ce = summed_loss(model, batch, torch.device("cpu"), anchor)
    torch.testing.assert_close(objective, ce, rtol=0, atol=1e-5)  # the same model: KL = 0
    moved = KLAnchor(model, weight=1.0).base.requires_grad_(True)  # a copy to train
    optimizer = torch.optim.SGD(moved.parameters(), lr=1e-2)
    summed_loss(moved, batch, torch.device("cpu"))[0].backward()
    optimizer.step()
    objective, ce = summed_loss(moved, batch, torch.device("cpu"), anchor)
    assert (objective - ce).item() > 1e-3
    assert all(not p.requires_grad for p in anchor.base.parameters())


def test_cosine_schedule_fades_to_zero(random_tiny):
    anchor = KLAnchor(random_tiny.model, weight=0.4, schedule="cosine")
    anchor.total_steps = 10
    assert anchor.weight_at(0) == pytest.approx(0.4)
    assert anchor.weight_at(5) == pytest.approx(0.2)
    assert anchor.weight_at(10) == pytest.approx(0.0, abs=1e-12)
    assert KLAnchor(random_tiny.model, weight=0.4).weight_at(10) == 0.4


@pytest.mark.integration
def test_training_with_the_anchor_keeps_it_frozen(real_manifest: Path, tmp_path: Path):
    config = _config(
        real_manifest,
        tmp_path,
        "model.variant=tiny",
        "model.pretrained=random",
        "data.max_train_samples=4",
        "data.num_workers=0",
        "training.batch_size=2",
        "training.max_steps=2",
        "training.lr=1e-3",
        "training.kl_weight=0.5",
        "training.kl_schedule=cosine",
    )
    run = Run(config)
    start = {k: v.clone() for k, v in run.anchor.base.state_dict().items()}
    assert run.anchor.total_steps == 2
    batches = batch_stream(run.loader, run.sampler, run.position, run.problems)
    run.model.train()
    for _ in range(2):
        run.train_step(batches)
    for key, tensor in run.anchor.base.state_dict().items():
        assert torch.equal(tensor, start[key]), key
    anchored = {id(p) for p in run.anchor.base.parameters()}
    optimized = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    assert not anchored & optimized
    trained = run.model.model.encoder.conv1.weight
    assert not torch.equal(trained, start["model.encoder.conv1.weight"])


def test_label_smoothing_is_the_objective_only(random_tiny, batch):
    model, eps = random_tiny.model.eval(), 0.1
    objective, ce = summed_loss(model, batch, torch.device("cpu"), label_smoothing=eps)
    plain, plain_ce = summed_loss(model, batch, torch.device("cpu"))
    torch.testing.assert_close(ce, plain_ce)  # what is logged stays comparable
    with torch.no_grad():
        logits = model(
            input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"]
        ).logits
    keep = batch["labels"] != -100
    log_p = torch.log_softmax(logits[keep].double(), dim=-1)
    nll = -log_p.gather(1, batch["labels"][keep][:, None]).sum()
    uniform = -log_p.mean(dim=-1).sum()  # eps spread evenly over the vocabulary
    expected = (1 - eps) * nll + eps * uniform
    torch.testing.assert_close(objective.double(), expected, rtol=1e-5, atol=0)
    assert not torch.allclose(objective, plain)  # the smoothing did change the objective
