"""training.soup_members: a soup of runs of different recipes from one start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kidwhisper.config import ConfigError, load_config, soup_member_configs
from kidwhisper.training.experiments import run_experiment

from .conftest import QUICKSTART, REPO, check_model_card
from .test_soup import _overrides

WEIGHTS = "model.safetensors"
# The second member trains on data.train's first manifest alone, at another learning rate.
MEMBERS = (
    "[{training.seed: 3}, {training.seed: 3, training.lr: 5.0e-4, data.train_weights: [1, 0]}]"
)


def _config(tmp_path: Path, *extra: str):
    """test_soup's tiny soup, as a soup of recipes on two training manifests."""
    recipes = [
        f"data.train=[{QUICKSTART / 'train.jsonl'},{QUICKSTART / 'dev.jsonl'}]",
        "data.train_weights=[1,1]", "training.soup_seeds=[]", f"training.soup_members={MEMBERS}",
    ]  # fmt: skip
    return load_config(REPO / "configs/quickstart.yaml", _overrides(tmp_path, *recipes, *extra))


@pytest.fixture(scope="module")
def soup(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("recipes")
    return tmp, run_experiment(_config(tmp))


def _final(tmp: Path, name: str) -> dict:
    return load_file(tmp / "ckpt" / name / "final" / WEIGHTS)


def test_each_member_is_an_ordinary_run_of_its_recipe_and_the_soup_their_mean(soup):
    tmp, metrics = soup
    runs = [_final(tmp, f"soup-member{i}") for i in (0, 1)]
    for name, tensor in _final(tmp, "soup").items():  # float32 results of a float64 mean
        expected = (runs[0][name].double() + runs[1][name].double()) / 2
        torch.testing.assert_close(tensor.double(), expected, rtol=2**-23, atol=1e-12)
    saved = [load_config(tmp / "exp" / f"soup-member{i}" / "config.yaml") for i in (0, 1)]
    assert [c.training.lr for c in saved] == [1e-3, 5e-4] and {c.training.seed for c in saved} == {
        3
    }
    assert len(saved[0].data.train) == 2 and saved[0].data.train_weights == [1.0, 1.0]
    # Weight 0 left the extra manifest out: one manifest, each clip once an epoch.
    assert saved[1].data.train == [str(QUICKSTART / "train.jsonl")]
    assert saved[1].data.train_weights is None
    members = metrics["soup"]["members"]
    assert [m["name"] for m in members] == ["soup-member0", "soup-member1"]
    assert members[1]["changes"] == {"training.seed": 3, "training.lr": 5e-4,
                                     "data.train_weights": [1, 0]}  # fmt: skip
    assert members[1]["train_utterances"] < members[0]["train_utterances"]
    assert metrics["train_utterances"] == members[0]["train_utterances"]  # the widest data


def test_the_soup_of_recipes_is_recorded_as_such(soup):
    tmp, _ = soup
    results = (tmp / "exp" / "soup" / "results.md").read_text()
    assert "## The runs averaged (training.soup_members)" in results
    assert "| soup-member1 | 3 | `training.seed: 3`, `training.lr: 0.0005`," in results
    card = check_model_card(tmp / "ckpt" / "soup" / "final")
    assert "runs of `kidwhisper train` with different recipes" in card.text
    assert json.loads((tmp / "exp" / "soup" / "metrics.json").read_text())["finished"]


def test_a_member_added_keeps_the_finished_runs_and_redoes_the_average(soup):
    tmp, first = soup
    before = (tmp / "ckpt" / "soup-member1" / "final" / WEIGHTS).stat().st_mtime_ns
    more = MEMBERS[:-1] + ", {training.seed: 4}]"
    grown = run_experiment(_config(tmp, f"training.soup_members={more}"))
    assert (tmp / "ckpt" / "soup-member1" / "final" / WEIGHTS).stat().st_mtime_ns == before
    assert grown["soup"]["members"][:2] == first["soup"]["members"]
    assert [m["seed"] for m in grown["soup"]["members"]] == [3, 3, 4]


def test_a_member_without_an_extra_is_the_config_without_it(tmp_path):
    """So its runs are exactly those of the config that never had the extra manifest."""
    member = soup_member_configs(_config(tmp_path))[1]
    train = f"data.train=[{QUICKSTART / 'train.jsonl'}]"
    alone = _config(tmp_path, train, "data.train_weights=null", "training.soup_members=[]",
                    "training.seed=3", "training.lr=5e-4")  # fmt: skip
    assert member == alone


@pytest.mark.parametrize(
    ("members", "error"),
    [
        ("[{model.variant: base}, {training.seed: 1}]", r"\[0\]\): model.variant: is the soup's"),
        ("[{data.eval: x.jsonl}, {training.seed: 1}]", r"\[0\]\): data.eval: is the soup's"),
        ("[{training.sed: 1}, {training.seed: 1}]", r"training.sed: unknown key.*'seed'"),
        ("[{training.seed: 1}, {training.seed: 1}]", r"\[1\]\).*the same run as member 0"),
        ("[{data.train_weights: [0, 1]}, {training.seed: 1}]", r"train_weights\[0\]: is 0"),
        ("[{data.train_weights: [1]}, {training.seed: 1}]", r"has 1 weight\(s\) but data.train"),
        ("[{training.lr: -1}, {training.seed: 1}]", r"\[0\]\): training.lr: must be > 0"),
        ("[{training.seed: 1}]", r"training.soup_members: needs two or more members"),
    ],
)
def test_a_bad_member_is_refused_naming_it_and_its_key(tmp_path, members, error):
    with pytest.raises(ConfigError, match=error):
        _config(tmp_path, f"training.soup_members={members}")


def test_seeds_and_members_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"beside training.soup_seeds \[1, 2\]: a soup of seeds"):
        _config(tmp_path, "training.soup_seeds=[1,2]")
