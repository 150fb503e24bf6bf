"""`kidwhisper cv-compare`: paired fold differences and the rule-of-evidence verdict, on
fold experiments written with known figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kidwhisper.cli.main import main
from kidwhisper.training.cv import CVError
from kidwhisper.training.cv_compare import compare_cv, cv_name


def _folds(root: Path, name: str, wers: list[float], young: list[float], **extra) -> None:
    """Fold experiments `<name>-cv-fold<i>` whose final model scored these WERs."""
    for i, (wer, y) in enumerate(zip(wers, young, strict=True), 1):
        folder = root / f"{name}-cv-fold{i}"
        folder.mkdir(parents=True)
        final = {"wer": wer, "wer_by_age": {"5-7": y, "8-11": wer / 2}}
        metrics = {"name": folder.name, "finished": True, "eval_after": final}
        metrics.update(extra)
        (folder / "metrics.json").write_text(json.dumps(metrics))


BASE = [0.20, 0.18, 0.23, 0.17]
BASE_YOUNG = [0.29, 0.22, 0.34, 0.20]


def _shift(deltas: list[float]) -> list[float]:
    return [w + d for w, d in zip(BASE, deltas, strict=True)]


def test_paired_difference_and_a_better_verdict(tmp_path: Path):
    _folds(tmp_path, "base", BASE, BASE_YOUNG)
    _folds(tmp_path, "cand", _shift([-0.02, -0.01, -0.015, -0.01]), BASE_YOUNG)
    result = compare_cv(tmp_path, "base", "experiments/cand-cv/")
    diff = result["overall"]["difference"]
    assert result["folds"] == [1, 2, 3, 4]
    assert math.isclose(diff["mean"], -0.01375)
    # Sample std of (-0.02, -0.01, -0.015, -0.01) is 0.00479: the gain is beyond the spread.
    assert math.isclose(diff["std"], 0.0047871355, rel_tol=1e-6)
    assert math.isclose(result["overall"]["folds"][1], -0.02)
    assert result["verdict"] == "better"


def test_a_gain_that_makes_the_youngest_worse_is_not_better(tmp_path: Path):
    _folds(tmp_path, "base", BASE, BASE_YOUNG)
    _folds(tmp_path, "cand", [w - 0.01 for w in BASE], [y + 0.005 for y in BASE_YOUNG])
    assert compare_cv(tmp_path, "base", "cand")["verdict"] == "within the folds' spread"


def test_worse_and_within_the_spread(tmp_path: Path):
    _folds(tmp_path, "base", BASE, BASE_YOUNG)
    _folds(tmp_path, "worse", _shift([0.02, 0.03, 0.01, 0.02]), BASE_YOUNG)
    _folds(tmp_path, "noise", _shift([-0.02, 0.03, -0.01, 0.005]), BASE_YOUNG)
    assert compare_cv(tmp_path, "base", "worse")["verdict"] == "worse"
    assert compare_cv(tmp_path, "base", "noise")["verdict"] == "within the folds' spread"


def test_unfinished_folds_are_left_out_and_one_fold_is_too_few(tmp_path: Path):
    _folds(tmp_path, "base", BASE, BASE_YOUNG)
    _folds(tmp_path, "half", BASE[:2], BASE_YOUNG[:2])
    (tmp_path / "half-cv-fold3").mkdir()  # started, no metrics yet
    assert compare_cv(tmp_path, "base", "half")["folds"] == [1, 2]
    assert compare_cv(tmp_path, "base", "half")["verdict"] == "within the folds' spread"
    for i in (2, 3):
        folder = tmp_path / f"part-cv-fold{i}"
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"finished": False}))
    _folds(tmp_path, "part", BASE[:1], BASE_YOUNG[:1])
    assert compare_cv(tmp_path, "base", "part")["verdict"] == "too few folds"


def test_runs_on_different_folds_or_none_are_refused(tmp_path: Path):
    _folds(tmp_path, "base", BASE, BASE_YOUNG)
    _folds(tmp_path, "cand", BASE, BASE_YOUNG)
    for name, speakers in (("base", {"1": ["a"]}), ("cand", {"1": ["b"]})):
        (tmp_path / f"{name}-cv" / "folds").mkdir(parents=True)
        (tmp_path / f"{name}-cv" / "folds" / "folds.json").write_text(
            json.dumps({"speakers": speakers})
        )
    with pytest.raises(CVError, match="different folds"):
        compare_cv(tmp_path, "base", "cand")
    with pytest.raises(CVError, match="no finished fold"):
        compare_cv(tmp_path, "base", "missing")
    assert cv_name("experiments/cv-x-cv") == "cv-x" and cv_name("cv-x") == "cv-x"


def test_several_seeds_per_side_are_averaged_fold_by_fold(tmp_path: Path):
    # Seed noise of +-0.03 a fold hides a 0.01 gain in one run; averaged over both seeds
    # per side the noise cancels and the paired difference is exactly -0.01 on every fold.
    noise = [0.03, -0.03, 0.03, -0.03]
    _folds(tmp_path, "base", BASE, BASE_YOUNG)
    _folds(tmp_path, "base-s1", _shift(noise), BASE_YOUNG)
    _folds(tmp_path, "cand", _shift([n - 0.01 for n in noise]), BASE_YOUNG)
    _folds(tmp_path, "cand-s1", _shift([-0.01] * 4), BASE_YOUNG)
    assert compare_cv(tmp_path, "base", "cand")["verdict"] == "within the folds' spread"
    result = compare_cv(tmp_path, "base,base-s1", "cand,cand-s1")
    diff = result["overall"]["difference"]
    assert math.isclose(diff["mean"], -0.01) and diff["std"] < 1e-12
    assert result["verdict"] == "better" and result["runs"] == {"baseline": 2, "candidate": 2}
    assert result["baseline"] == "base + base-s1"
    # A fold only some seeds finished is left out, so every fold averages the same runs.
    (tmp_path / "cand-s1-cv-fold4" / "metrics.json").write_text(json.dumps({"finished": False}))
    assert compare_cv(tmp_path, "base,base-s1", "cand,cand-s1")["folds"] == [1, 2, 3]


def _speakers(root: Path, name: str, speakers: dict) -> None:
    (root / f"{name}-cv" / "folds").mkdir(parents=True)
    (root / f"{name}-cv" / "folds" / "folds.json").write_text(json.dumps({"speakers": speakers}))


@pytest.mark.parametrize("kind", ["seed", "member"])  # training.soup_seeds, soup_members
def test_one_run_of_a_soup_is_named_by_its_seed_or_member(tmp_path: Path, kind: str):
    # A soup's cv writes `soup-cv-fold<i>` (the soup) and `soup-cv-fold<i>-seed<S>` (its runs;
    # `-member<I>` for a soup of recipes).
    _folds(tmp_path, "soup", BASE, BASE_YOUNG)
    for seed, delta in ((0, 0.01), (1, 0.03)):
        for i, wer in enumerate(_shift([delta] * 4), 1):
            folder = tmp_path / f"soup-cv-fold{i}-{kind}{seed}"
            folder.mkdir()
            final = {"wer": wer, "wer_by_age": {"5-7": BASE_YOUNG[i - 1]}}
            metrics = {"finished": True, "eval_after": final}
            (folder / "metrics.json").write_text(json.dumps(metrics))
    _folds(tmp_path, "lever", _shift([0.01] * 4), BASE_YOUNG)
    # The soup's own folds are the soup, never its runs.
    soup = compare_cv(tmp_path, "soup", "lever")["overall"]["difference"]
    assert soup["mean"] == pytest.approx(0.01)
    # One run, its seeds averaged: (0.01 + 0.03) / 2 above the soup.
    runs = compare_cv(tmp_path, f"soup-{kind}0,soup-{kind}1", "lever")
    assert runs["overall"]["difference"]["mean"] == pytest.approx(-0.01)
    assert runs["folds"] == [1, 2, 3, 4] and runs["verdict"] == "better"
    with pytest.raises(CVError, match="no finished fold"):
        compare_cv(tmp_path, f"soup-{kind}7", "lever")
    # The runs hold out the soup's speakers: folds.json is the soup's.
    _speakers(tmp_path, "soup", {"1": ["a"]})
    _speakers(tmp_path, "lever", {"1": ["b"]})
    with pytest.raises(CVError, match="different folds"):
        compare_cv(tmp_path, f"soup-{kind}0", "lever")


def test_cli_prints_and_writes_the_table(tmp_path: Path, capsys):
    _folds(tmp_path, "base", BASE, BASE_YOUNG)
    _folds(tmp_path, "cand", [w + 0.01 for w in BASE], BASE_YOUNG)
    out = tmp_path / "cmp.md"
    args = ["cv-compare", "base", "cand", "--experiments-dir", str(tmp_path), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| overall | 19.50% | 20.50% | +1.00 ± 0.00 | +1.00 | +1.00 | +1.00 | +1.00 |" in printed
    assert "Verdict: worse." in printed and out.read_text() == printed
    assert main(["cv-compare", "base", "nothing", "--experiments-dir", str(tmp_path)]) == 2
    assert "no finished fold" in capsys.readouterr().err
