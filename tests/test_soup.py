"""training.soup_seeds: one run per seed, their final models averaged into one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kidwhisper.cli.main import main
from kidwhisper.config import ConfigError, load_config
from kidwhisper.training.cv import fold_result
from kidwhisper.training.experiments import ExperimentExistsError, run_experiment

from .conftest import QUICKSTART, REPO, check_model_card

WEIGHTS = "model.safetensors"


def _overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "model.variant=tiny", "model.pretrained=random",
        f"data.train=[{QUICKSTART / 'train.jsonl'}]", f"data.eval={QUICKSTART / 'dev.jsonl'}",
        "data.max_eval_samples=3", "data.num_workers=0", "training.batch_size=4",
        "training.max_steps=2", "training.warmup_steps=0", "training.lr=1e-3",
        "training.gradient_checkpointing=false", "evaluation.max_new_tokens=8",
        "evaluation.before_training=false", f"output.checkpoints_dir={tmp_path / 'ckpt'}",
        f"output.experiments_dir={tmp_path / 'exp'}", "output.name=soup",
        "training.soup_seeds=[3,4]", *extra,
    ]  # fmt: skip


def _config(tmp_path: Path, *extra: str):
    return load_config(REPO / "configs/quickstart.yaml", _overrides(tmp_path, *extra))


@pytest.fixture(scope="module")
def soup(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("soup")
    return tmp, run_experiment(_config(tmp))


def test_the_final_model_is_the_mean_of_one_run_per_seed(soup):
    tmp, _ = soup
    members = [load_file(tmp / "ckpt" / f"soup-seed{s}" / "final" / WEIGHTS) for s in (3, 4)]
    final = load_file(tmp / "ckpt" / "soup" / "final" / WEIGHTS)
    key = "model.decoder.layers.0.fc1.weight"
    assert not torch.equal(members[0][key], members[1][key])  # the seeds made two models
    for name, tensor in final.items():
        # float32 results of a float64 mean: within a float32 rounding of the values.
        expected = (members[0][name].double() + members[1][name].double()) / 2
        torch.testing.assert_close(tensor.double(), expected, rtol=2**-23, atol=1e-12)
    for seed in (3, 4):  # each member is an ordinary run with its own seed
        saved = json.loads((tmp / "exp" / f"soup-seed{seed}" / "metrics.json").read_text())
        assert saved["finished"] and saved["steps"] == 2
        config = (tmp / "exp" / f"soup-seed{seed}" / "config.yaml").read_text()
        assert f"seed: {seed}\n" in config and "soup_seeds: []" in config


def test_the_soup_records_its_runs_and_its_own_evaluation(soup):
    tmp, metrics = soup
    folder = tmp / "exp" / "soup"
    assert json.loads((folder / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert (
        metrics["finished"] and metrics["steps"] == 4 and metrics["eval_after"]["utterances"] == 3
    )
    members = metrics["soup"]["members"]
    assert [(m["name"], m["seed"]) for m in members] == [("soup-seed3", 3), ("soup-seed4", 4)]
    for m in members:
        run = json.loads((tmp / "exp" / m["name"] / "metrics.json").read_text())
        assert m["wer"] == run["eval_after"]["wer"]
    assert metrics["soup"]["mean_wer"] == pytest.approx((members[0]["wer"] + members[1]["wer"]) / 2)
    assert (folder / "predictions_soup.jsonl").read_text().count("\n") == 3
    results = (folder / "results.md").read_text()
    assert (
        "## The runs averaged (training.soup_seeds)" in results and "| soup-seed4 | 4 |" in results
    )
    card = check_model_card(tmp / "ckpt" / "soup" / "final")
    assert card.data.eval_results[0].metric_value == round(100 * metrics["eval_after"]["wer"], 2)
    assert "The mean of the final models of 2 runs" in card.text
    saved = (tmp / "ckpt" / "soup" / "final" / "kidwhisper.yaml").read_text()
    assert "soup_seeds:\n  - 3\n  - 4\n" in saved or "soup_seeds: [3, 4]" in saved


def test_members_left_unscored_train_alike_and_only_the_soup_is_decoded(soup, tmp_path):
    tmp, scored = soup
    metrics = run_experiment(_config(tmp_path, "evaluation.score_soup_members=false"))
    for seed in (3, 4):
        run = tmp_path / "exp" / f"soup-seed{seed}"
        assert json.loads((run / "metrics.json").read_text())["eval_after"] is None
        assert not list(run.glob("predictions*.jsonl"))
    assert metrics["soup"]["mean_wer"] is None and metrics["eval_after"]["utterances"] == 3
    ours, theirs = (load_file(t / "ckpt" / "soup" / "final" / WEIGHTS) for t in (tmp_path, tmp))
    for name, tensor in theirs.items():  # the same runs, so the same soup
        torch.testing.assert_close(ours[name], tensor)
    assert "runs" in fold_result(scored) and "runs" not in fold_result(metrics)


def test_a_finished_soup_is_kept_and_an_interrupted_one_reuses_its_finished_runs(soup):
    tmp, metrics = soup
    with pytest.raises(ExperimentExistsError, match="--overwrite"):
        run_experiment(_config(tmp))
    # As if the soup died after its runs: they are not trained again, the average is redone.
    member = tmp / "ckpt" / "soup-seed3" / "final" / WEIGHTS
    before = member.stat().st_mtime_ns
    (tmp / "exp" / "soup" / "metrics.json").unlink()
    again = run_experiment(_config(tmp))
    assert member.stat().st_mtime_ns == before
    assert again["eval_after"]["wer"] == metrics["eval_after"]["wer"]  # the same soup again
    assert again["soup"] == metrics["soup"]


def test_a_soup_asked_for_with_more_seeds_keeps_its_runs_and_redoes_its_average(tmp_path):
    first = run_experiment(_config(tmp_path))
    member = tmp_path / "ckpt" / "soup-seed3" / "final" / WEIGHTS
    before = member.stat().st_mtime_ns
    grown = run_experiment(_config(tmp_path, "training.soup_seeds=[3,4,5]"))
    assert member.stat().st_mtime_ns == before  # seeds 3 and 4 were not trained again
    assert [m["seed"] for m in grown["soup"]["members"]] == [3, 4, 5]
    assert grown["soup"]["members"][:2] == first["soup"]["members"]
    soup = load_file(tmp_path / "ckpt" / "soup" / "final" / WEIGHTS)
    runs = [load_file(tmp_path / "ckpt" / f"soup-seed{s}" / "final" / WEIGHTS) for s in (3, 4, 5)]
    for name, tensor in soup.items():  # float32 results of a float64 mean, as above
        mean = sum(run[name].double() for run in runs) / 3
        torch.testing.assert_close(tensor.double(), mean, rtol=2**-23, atol=1e-12)
    with pytest.raises(ExperimentExistsError, match="--overwrite"):  # the same soup again
        run_experiment(_config(tmp_path, "training.soup_seeds=[3,4,5]"))


def test_a_member_trained_with_another_config_is_refused(tmp_path):
    run_experiment(_config(tmp_path, "training.soup_seeds=[]", "output.name=soup-seed3",
                           "training.seed=3", "training.lr=5e-4"))  # fmt: skip
    with pytest.raises(ExperimentExistsError, match=r"soup-seed3 holds a finished run of another"):
        run_experiment(_config(tmp_path))
    with pytest.raises(FileNotFoundError, match="--resume: no run of the soup other"):
        run_experiment(_config(tmp_path, "output.name=other"), resume=True)


@pytest.mark.parametrize("seeds", ["[0]", "[1,1]"])
def test_a_soup_needs_two_different_seeds(tmp_path, seeds):
    with pytest.raises(ConfigError, match=r"training.soup_seeds.*two or more different seeds"):
        _config(tmp_path, f"training.soup_seeds={seeds}")


def test_a_seed_a_soup_would_not_use_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"training.seed.*not used by a soup.*soup_seeds=\[\]"):
        _config(tmp_path, "training.seed=1")
    assert _config(tmp_path, "training.seed=1", "training.soup_seeds=[]").training.seed == 1


def test_train_prints_the_soup_and_its_runs(tmp_path, capsys):
    args = ["train", str(REPO / "configs/quickstart.yaml"), *_overrides(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "exp" / "soup" / "metrics.json").read_text())
    runs = saved["soup"]["members"]
    assert f"fine-tuned WER: {100 * saved['eval_after']['wer']:.2f}%" in out
    assert f"the final model is the soup of 2 runs (seed 3 {100 * runs[0]['wer']:.2f}%" in out
