"""Speaker folds (`kidwhisper split --folds`) and cross-validation (`kidwhisper cv`): no
held-out speaker is ever trained on, buckets are spread, runs resume, the summary's maths."""

from __future__ import annotations

import copy
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from kidwhisper.cli.main import main
from kidwhisper.config import load_config, soup_member_configs
from kidwhisper.data.dataset import read_manifest
from kidwhisper.inference.curation import speaker
from kidwhisper.inference.folds import assign_folds, fold_dir, write_folds
from kidwhisper.training import cv
from kidwhisper.training.experiments import Experiment, regrows

from .conftest import SO762, needs_shared

BUCKETS = {"5-7": 7, "8-11": 6, "12+": 3}  # speakers per bucket in the synthetic pool


def _manifest(path: Path, prefix: str, buckets: dict[str, int], first: int = 0) -> Path:
    """Speakers `<prefix>NN` with 2 to 5 utterances each; audio beside the manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "audio").mkdir(exist_ok=True)
    rows, n = [], first
    for bucket, count in buckets.items():
        for _ in range(count):
            for u in range(2 + n % 4):
                uid = f"U_{prefix}{n:02d}_{u}"
                (path.parent / "audio" / f"{uid}.flac").touch()
                rows.append(
                    {"utterance_id": uid, "child_id": f"{prefix}{n:02d}", "age_bucket": bucket,
                     "audio_path": f"audio/{uid}.flac", "orthographic_text": "a b"}
                )  # fmt: skip
            n += 1
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def pool(tmp_path: Path) -> list[Path]:
    train = _manifest(tmp_path / "kids" / "train.jsonl", "C", {"5-7": 5, "8-11": 5, "12+": 2})
    dev = _manifest(tmp_path / "kids_dev" / "dev.jsonl", "C", {"5-7": 2, "8-11": 1, "12+": 1}, 12)
    return [train, dev]


def _speakers(path: Path) -> set[str]:
    return {speaker(u) for u in read_manifest(path, require_text=False)}


def test_folds_are_speaker_disjoint_cover_everyone_and_resolve_audio(pool, tmp_path: Path):
    report = write_folds(pool, 4, tmp_path / "folds", seed=3)
    everyone = set().union(*map(_speakers, pool))
    heldout = [_speakers(fold_dir(tmp_path / "folds", i) / "heldout.jsonl") for i in range(1, 5)]
    assert set().union(*heldout) == everyone and sum(map(len, heldout)) == len(everyone)
    for i, held in enumerate(heldout, 1):
        train = _speakers(fold_dir(tmp_path / "folds", i) / "train.jsonl")
        assert not train & held and train | held == everyone
        for utt in read_manifest(fold_dir(tmp_path / "folds", i) / "heldout.jsonl"):
            assert utt.audio.is_file()  # rebased paths point at the same files
    summary = json.loads((tmp_path / "folds" / "folds.json").read_text())
    assert summary["folds"] == 4 and sum(len(s) for s in summary["speakers"].values()) == 16
    assert report.summary_lines()[0].startswith("4 speaker folds")


def test_folds_are_stratified_by_bucket_and_balanced(pool):
    utterances = [u for p in pool for u in read_manifest(p)]
    k = 3
    fold_of = assign_folds(utterances, k, seed=0)
    per_bucket: dict[str, Counter[int]] = defaultdict(Counter)
    for utt in utterances:
        per_bucket[utt.age_bucket][fold_of[speaker(utt)]] += 0  # every fold listed
    for s, fold in fold_of.items():
        bucket = next(u.age_bucket for u in utterances if speaker(u) == s)
        per_bucket[bucket][fold] += 1
    for bucket, counts in per_bucket.items():
        spread = [counts[f] for f in range(k)]
        assert max(spread) - min(spread) <= 1, (bucket, spread)
    sizes = Counter(fold_of[speaker(u)] for u in utterances)
    biggest = max(Counter(speaker(u) for u in utterances).values())
    assert max(sizes.values()) - min(sizes.values()) <= 2 * biggest


def test_folds_are_deterministic_and_depend_on_the_seed(pool):
    utterances = [u for p in pool for u in read_manifest(p)]
    first = assign_folds(utterances, 4, seed=0)
    assert assign_folds(list(reversed(utterances)), 4, seed=0) == first
    assert any(assign_folds(utterances, 4, seed=s) != first for s in range(1, 6))


def test_split_folds_cli_and_its_errors(pool, tmp_path: Path, capsys):
    out = tmp_path / "cli"
    args = ["split", "--folds", "2", "--out", str(out), *map(str, pool)]
    assert main(args) == 0
    assert (out / "fold_2" / "heldout.jsonl").is_file()
    assert "2 speaker folds" in capsys.readouterr().out
    assert main(args) == 2  # outputs exist: --force replaces them
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert main(["split", "--folds", "40", "--out", str(tmp_path / "x"), str(pool[0])]) == 2
    assert "cannot fill 40 folds" in capsys.readouterr().err
    assert main(["split", "--out", str(tmp_path / "y"), *map(str, pool)]) == 2


@needs_shared
def test_the_shared_children_make_four_stratified_folds(tmp_path: Path):
    report = write_folds([SO762 / "train.jsonl", SO762 / "dev.jsonl"], 4, tmp_path)
    assert sum(len(s) for s in report.speakers.values()) == 52
    for bucket in ("5-7", "8-11", "12+"):
        counts = [report.counts[f].get(bucket, [0, 0])[0] for f in range(1, 5)]
        assert max(counts) - min(counts) <= 1, (bucket, counts)


# --- kidwhisper cv -------------------------------------------------------------------------


def _config(tmp_path: Path, pool: list[Path], *extra: str):
    older = _manifest(tmp_path / "older" / "train.jsonl", "A", {"12+": 4}, 50)
    return load_config(
        None,
        [
            "model.variant=tiny", "model.pretrained=random",
            f"data.train=[{pool[0]},{older}]", f"data.eval={pool[1]}",
            f"output.experiments_dir={tmp_path / 'exp'}",
            f"output.checkpoints_dir={tmp_path / 'ckpt'}", "output.name=mix", *extra,
        ],
    )  # fmt: skip


class FakeRunner:
    """Stands in for run_experiment: records the fold and writes a finished metrics.json
    whose WER is a known function of the fold."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.configs = []

    def __call__(self, config, overwrite: bool = False) -> dict:
        self.ran.append(config.output.name)
        self.configs.append(config)
        fold = int(config.output.name.rsplit("fold", 1)[1])
        wer = {"wer": 0.1 * fold, "wer_by_age": {"5-7": 0.2 * fold, "8-11": 0.05 * fold}}
        experiment = Experiment(config)  # a soup of other seeds is redone, as run_soup does
        experiment.create(overwrite or regrows(experiment))
        metrics = {"name": config.output.name, "finished": True, "eval_after": wer}
        experiment.write_metrics(metrics)
        return metrics


def test_cv_extras_train_every_fold_and_held_out_speakers_never_train(pool, tmp_path: Path):
    config = _config(tmp_path, pool, "data.train_weights=[2,1]",
                     "data.source_augment={older: {pitch: {p: 1, semitones: [1, 3]}}}")  # fmt: skip
    runner = FakeRunner()
    cv.run_cv(config, 3, seed=0, runner=runner)
    assert runner.ran == [f"mix-cv-fold{i}" for i in (1, 2, 3)]
    older = str(tmp_path / "older" / "train.jsonl")
    pooled = set().union(*map(_speakers, pool))
    for fold in runner.configs:
        assert fold.data.train[1] == older and fold.data.train_weights == [2.0, 1.0]
        assert list(fold.data.source_augment) == [older]  # the block follows its manifest
        held = _speakers(Path(fold.data.eval))
        assert held and held <= pooled and not held & _speakers(Path(older))
        for manifest in fold.data.train:
            assert not _speakers(Path(manifest)) & held
    # Training on a manifest that holds a held-out speaker is refused.
    leaky = copy.deepcopy(runner.configs[0])
    leaky.data.train += [str(p) for p in pool]
    with pytest.raises(cv.CVError, match="never be trained on"):
        cv.check_disjoint(leaky)


def test_cv_resumes_skipping_finished_folds_and_refuses_changed_folds(pool, tmp_path: Path):
    config = _config(tmp_path, pool)
    first = FakeRunner()
    cv.run_cv(config, 3, runner=first)
    assert len(first.ran) == 3
    again = FakeRunner()
    cv.run_cv(config, 3, runner=again)
    assert again.ran == []  # all finished
    (tmp_path / "exp" / "mix-cv-fold2" / "metrics.json").unlink()
    partial = FakeRunner()
    result = cv.run_cv(config, 3, runner=partial)
    assert partial.ran == ["mix-cv-fold2"]
    assert [f["fold"] for f in result["per_fold"]] == [1, 2, 3]
    with pytest.raises(cv.CVError, match="folds differ"):
        cv.run_cv(config, 3, seed=next(s for s in range(1, 20) if _differs(pool, s)))
    assert (tmp_path / "exp" / "mix-cv" / "cv.md").is_file()


def test_cv_stops_at_a_finished_fold_of_another_config(pool, tmp_path: Path):
    """Skipping it would report that config's figures as this one's."""
    cv.run_cv(_config(tmp_path, pool), 3, runner=FakeRunner())
    again = FakeRunner()
    with pytest.raises(cv.CVError, match=r"mix-cv-fold1: fold 1 finished with another config "
                       r"\(training.lr differ\): pass --overwrite"):  # fmt: skip
        cv.run_cv(_config(tmp_path, pool, "training.lr=1e-4"), 3, runner=again)
    assert again.ran == []
    result = cv.run_cv(_config(tmp_path, pool, "training.lr=1e-4"), 3, runner=again,
                       overwrite=True)  # fmt: skip
    assert len(again.ran) == 3 and result["summary"]["overall"]["n"] == 3


def test_cv_of_a_soup_with_other_seeds_redoes_its_folds_and_reports_only_those(pool, tmp_path):
    cv.run_cv(_config(tmp_path, pool, "training.soup_seeds=[0,1]"), 3, runner=FakeRunner())
    grown, more = FakeRunner(), _config(tmp_path, pool, "training.soup_seeds=[0,1,2]")
    result = cv.run_cv(more, 3, runner=grown, only=[1])
    assert grown.ran == ["mix-cv-fold1"]  # folds 2 and 3 are another process's
    assert [f["fold"] for f in result["per_fold"]] == [1]  # still the soups of 2: left out
    result = cv.run_cv(more, 3, runner=grown)
    assert grown.ran == ["mix-cv-fold1", "mix-cv-fold2", "mix-cv-fold3"]
    assert result["summary"]["overall"]["n"] == 3


def test_cv_members_train_on_the_fold_less_the_extras_they_weight_0(pool, tmp_path: Path):
    more = _manifest(tmp_path / "kids2" / "train.jsonl", "K", {"5-7": 2, "8-11": 2}, 30)
    older = tmp_path / "older" / "train.jsonl"  # _config writes it
    members = "[{training.seed: 1}, {data.train_weights: [1, 1, 0]}]"
    config = _config(tmp_path, pool, f"data.train=[{pool[0]},{more},{older}]",
                     "data.train_weights=[2,1,1]", f"training.soup_members={members}")  # fmt: skip
    runner = FakeRunner()
    cv.run_cv(config, 3, runner=runner, pool=[str(pool[0]), str(more)])
    assert runner.ran == [f"mix-cv-fold{i}" for i in (1, 2, 3)]
    for fold in runner.configs:
        mixed, alone = soup_member_configs(fold)  # the pooled manifests' weights summed
        assert fold.data.train[1:] == [str(older)] and mixed.data.train == fold.data.train
        assert mixed.data.train_weights == [3.0, 1.0] and mixed.training.seed == 1
        assert alone.data.train == fold.data.train[:1] and alone.data.train_weights is None
        assert alone.data.eval == fold.data.eval  # the fold's held-out speakers


def test_cv_only_folds_runs_those_and_summarises_every_finished_one(pool, tmp_path: Path):
    """Two processes can share one cross-validation: each runs its folds, and the summary
    holds whatever has finished."""
    config = _config(tmp_path, pool)
    other = FakeRunner()  # the other process: it finishes fold 3 while fold 1 trains here

    def here_and_there(fold_config, overwrite=False):
        there = copy.deepcopy(fold_config)
        there.output.name = fold_config.output.name.replace("fold1", "fold3")
        there.data.train = [p.replace("fold_1", "fold_3") for p in fold_config.data.train]
        there.data.eval = fold_config.data.eval.replace("fold_1", "fold_3")
        other(there)
        return FakeRunner()(fold_config)

    result = cv.run_cv(config, 3, runner=here_and_there, only=[1])
    assert other.ran == ["mix-cv-fold3"] and [f["fold"] for f in result["per_fold"]] == [1, 3]
    assert result["summary"]["overall"]["n"] == 2
    again = FakeRunner()
    result = cv.run_cv(config, 3, runner=again, only=[2])
    assert again.ran == ["mix-cv-fold2"] and [f["fold"] for f in result["per_fold"]] == [1, 2, 3]
    with pytest.raises(cv.CVError, match="--only-folds 4: folds are numbered 1 to 3"):
        cv.run_cv(config, 3, runner=FakeRunner(), only=[4])


def _differs(pool: list[Path], seed: int) -> bool:
    utterances = [u for p in pool for u in read_manifest(p)]
    return assign_folds(utterances, 3, seed) != assign_folds(utterances, 3, 0)


def test_cv_summary_maths_on_known_per_fold_figures(pool, tmp_path: Path):
    result = cv.run_cv(_config(tmp_path, pool), 3, runner=FakeRunner())
    overall = result["summary"]["overall"]  # WERs 0.1, 0.2, 0.3
    assert math.isclose(overall["mean"], 0.2) and math.isclose(overall["std"], 0.1)
    assert math.isclose(overall["min"], 0.1) and math.isclose(overall["max"], 0.3)
    young = result["summary"]["by_age"]["5-7"]  # 0.2, 0.4, 0.6
    assert math.isclose(young["mean"], 0.4) and math.isclose(young["std"], 0.2)
    saved = json.loads((tmp_path / "exp" / "mix-cv" / "cv.json").read_text())
    assert saved["summary"] == result["summary"] and saved["extra_training"]
    table = (tmp_path / "exp" / "mix-cv" / "cv.md").read_text()
    assert "| overall | 20.00% ± 10.00% [10.00%–30.00%] |" in table
    # A bucket missing from a fold is summarised over the folds that have it.
    partial = cv.summarize(
        [{"wer": 0.1, "wer_by_age": {"5-7": 0.3}}, {"wer": 0.3, "wer_by_age": {}}]
    )
    assert partial["by_age"]["5-7"] == {"mean": 0.3, "std": 0.0, "min": 0.3, "max": 0.3, "n": 1}


def test_cv_of_a_soup_reports_one_run_beside_the_soup(pool, tmp_path: Path):
    def soup_runner(config, overwrite: bool = False) -> dict:
        fold = int(config.output.name.rsplit("fold", 1)[1])
        runs = [{"wer": 0.1 * fold + d, "wer_by_age": {"5-7": 0.2 * fold + d}} for d in (0, 0.02)]
        metrics = FakeRunner()(config, overwrite)  # the soup's own WER: 0.1 x fold
        metrics["soup"] = {"members": runs, "mean_wer": sum(r["wer"] for r in runs) / 2}
        Experiment(config).write_metrics(metrics)
        return metrics

    result = cv.run_cv(_config(tmp_path, pool), 3, runner=soup_runner)
    fold = result["per_fold"][1]  # fold 2: runs 0.20 and 0.22, soup 0.20
    assert math.isclose(fold["runs"]["wer"], 0.21) and math.isclose(fold["wer"], 0.2)
    assert math.isclose(fold["runs"]["wer_by_age"]["5-7"], 0.41)
    assert math.isclose(result["summary"]["runs"]["mean"], 0.21)
    assert math.isclose(result["summary"]["soup_minus_run"]["mean"], -0.01)
    table = (tmp_path / "exp" / "mix-cv" / "cv.md").read_text()
    assert "| one run (mean of the soup's runs) | 21.00% ± 10.00% [11.00%–31.00%] |" in table
    assert "| soup - one run (points) | -1.00 ± 0.00 | -1.00 | -1.00 | -1.00 |" in table


def test_cv_cli_prints_the_table(pool, tmp_path: Path, capsys, monkeypatch):
    import kidwhisper.training.experiments as experiments

    monkeypatch.setattr(experiments, "run_experiment", FakeRunner())
    config = _config(tmp_path, pool)
    (tmp_path / "c.yaml").write_text(
        "model: {variant: tiny, pretrained: random}\n"
        f"data: {{train: [{config.data.train[0]}], eval: {config.data.eval}}}\n"
        f"output: {{experiments_dir: {tmp_path / 'exp'}, checkpoints_dir: {tmp_path / 'c'}}}\n"
    )
    assert main(["cv", str(tmp_path / "c.yaml"), "--folds", "2"]) == 0
    assert "| overall |" in capsys.readouterr().out
    # Overrides may follow the options.
    assert main(["cv", str(tmp_path / "c.yaml"), "--folds", "2", "output.name=named"]) == 0
    assert (tmp_path / "exp" / "named-cv" / "cv.md").is_file()
    # One fold of another cross-validation, overrides after the fold list.
    args = ["cv", str(tmp_path / "c.yaml"), "--folds", "2", "--only-folds", "2", "output.name=h"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "exp" / "h-cv" / "cv.json").read_text())
    assert [f["fold"] for f in summary["per_fold"]] == [2]
    with pytest.raises(SystemExit):
        main(["cv", str(tmp_path / "c.yaml"), "--folds", "2", "--bogus"])
    assert main(["cv", str(tmp_path / "c.yaml"), "--folds", "2", "--pool", "nothing"]) == 2
    assert "names no data.train manifest" in capsys.readouterr().err
