"""The moving average of the weights (`training.ema_decay`): its maths, swapping, checkpoints,
resume, and that it leaves training itself (and runs without it) as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kidwhisper.config import ConfigError, TrainingConfig, load_config
from kidwhisper.training.ema import EMA, build_ema
from kidwhisper.training.experiments import write_final_model
from kidwhisper.training.run import Run

from .conftest import QUICKSTART, state_copy, train_steps


def test_the_average_follows_the_warmed_up_decay():
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0]]))
    ema = EMA(layer, decay=0.5)
    expected = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    for n, value in enumerate([3.0, 5.0, -1.0, 0.5, 2.0, 4.0, 7.0, 1.0, 0.0, 9.0, 8.0]):
        decay = min(0.5, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(decay)
        with torch.no_grad():
            layer.weight.fill_(value)
        ema.update()
        expected = decay * expected + (1 - decay) * value
        # float32 lerp: a few ulps of values below 10 per update
        torch.testing.assert_close(ema.shadow["weight"].double(), expected, rtol=0, atol=1e-5)
    assert ema.updates == 11 and ema.current_decay() == 0.5  # warmed up: (1+11)/21 > 0.5


def test_swapping_puts_the_average_in_and_the_trained_weights_back():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    model[1].weight.requires_grad_(False)  # frozen: no average
    ema = EMA(model, decay=0.9)
    assert set(ema.shadow) == {"0.weight", "0.bias", "1.bias"}
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    moved = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update()  # decay 0.1: average = 0.1 start + 0.9 moved
    with ema.swapped():
        with ema.swapped():  # re-entrant
            inside = {k: v.clone() for k, v in model.state_dict().items()}
        state = ema.state_dict()
    for key in ema.shadow:
        torch.testing.assert_close(inside[key], 0.1 * trained[key] + 0.9 * moved[key])
    assert torch.equal(inside["1.weight"], moved["1.weight"])
    assert all(torch.equal(v, moved[k]) for k, v in model.state_dict().items())
    # A checkpoint is written swapped: model weights = average, the state = trained weights.
    restored = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    restored[1].weight.requires_grad_(False)
    restored.load_state_dict(inside)
    again = EMA(restored, decay=0.9)
    again.load_state_dict(state)
    assert all(torch.equal(v, moved[k]) for k, v in restored.state_dict().items())
    assert again.updates == 1 and not again.is_swapped
    for key in ema.shadow:
        assert torch.equal(again.shadow[key], inside[key].float())


def test_off_by_default_and_bad_decays_are_config_errors():
    assert TrainingConfig().ema_decay is None
    assert build_ema(torch.nn.Linear(1, 1), None) is None
    assert build_ema(torch.nn.Linear(1, 1), 0.0) is None
    with pytest.raises(ConfigError, match=r"training\.ema_decay"):
        load_config(None, ["training.ema_decay=1.0"], check_paths=False)
    with pytest.raises(ConfigError, match="fsdp"):
        load_config(None, ["training.ema_decay=0.9", "training.strategy=fsdp"], check_paths=False)


# --- in a run: random tiny, the shipped clips ------------------------------------------------


def _config(root: Path, *extra: str):
    return load_config(
        None,
        [
            "model.variant=tiny", "model.pretrained=random",
            f"data.train=[{QUICKSTART / 'train.jsonl'}]", "data.eval=null", "data.num_workers=0",
            "training.batch_size=4", "training.gradient_accumulation_steps=1",
            "training.max_steps=3", "training.warmup_steps=0", "training.lr=1e-3",
            "training.gradient_checkpointing=false", "evaluation.before_training=false",
            f"output.checkpoints_dir={root / 'ckpt'}",
            f"output.experiments_dir={root / 'exp'}", "output.name=run", *extra,
        ],
    )  # fmt: skip


def _three_steps_saving_after_two(config) -> dict:
    run = Run(config)
    batches = train_steps(run, 2)
    run.save(None)
    saved = {"trained": state_copy(run.model)}
    if run.ema:
        with run.ema.swapped():
            saved["average"] = state_copy(run.model)
    train_steps(run, 1, batches)
    return {"run": run, "saved": saved, "final": state_copy(run.model)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with_ema = tmp_path_factory.mktemp("ema")
    without = tmp_path_factory.mktemp("plain")
    return {
        "ema": _three_steps_saving_after_two(_config(with_ema, "training.ema_decay=0.99")),
        "plain": _three_steps_saving_after_two(_config(without)),
        "ema_root": with_ema,
        "plain_root": without,
    }


@pytest.mark.slow
def test_the_average_changes_nothing_in_training_itself(runs):
    ema, plain = runs["ema"], runs["plain"]
    for key, value in plain["final"].items():
        assert torch.equal(ema["final"][key], value), key  # swaps and saves left no trace
    assert plain["run"].ema is None and "ema" not in plain["run"].trainer_state()
    step = runs["plain_root"] / "ckpt" / "run" / "step_0000002"
    weights = load_file(step / "model" / "model.safetensors")
    assert all(torch.equal(weights[k], plain["saved"]["trained"][k]) for k in weights)


@pytest.mark.slow
def test_checkpoints_hold_the_average_and_resume_continues_exactly(runs):
    ema = runs["ema"]
    step = runs["ema_root"] / "ckpt" / "run" / "step_0000002"
    weights = load_file(step / "model" / "model.safetensors")
    average = ema["saved"]["average"]
    assert all(torch.equal(weights[k], average[k]) for k in weights)
    assert any(not torch.equal(average[k], ema["saved"]["trained"][k]) for k in weights)
    resumed = Run(ema["run"].config)
    assert resumed.resume() and resumed.state.step == 2 and resumed.ema.updates == 2
    assert all(
        torch.equal(v, ema["saved"]["trained"][k]) for k, v in state_copy(resumed.model).items()
    )
    train_steps(resumed, 1)
    assert all(torch.equal(v, ema["final"][k]) for k, v in state_copy(resumed.model).items())
    for key, value in ema["run"].ema.shadow.items():
        assert torch.equal(resumed.ema.shadow[key], value), key


@pytest.mark.slow
def test_the_final_model_is_the_average(runs):
    from kidwhisper.training.experiments import Experiment

    config = runs["ema"]["run"].config
    experiment = Experiment(config)
    write_final_model(experiment)
    final = load_file(experiment.model_dir / "model.safetensors")
    average = runs["ema"]["saved"]["average"]
    assert all(torch.equal(final[k], average[k]) for k in final)
    step = runs["ema_root"] / "ckpt" / "run" / "step_0000002"
    assert json.loads((step / "meta.json").read_text())["step"] == 2
