"""Probe (docs/experiments.md, issue 18): a soup of finished cv runs, fold by fold, scored
and recorded as a cv of its own, so that `kidwhisper cv-compare` reads it like any other.

`training.soup_seeds` and `training.soup_members` train their runs themselves, under
`<name>-cv-fold<i>-seed<S>` or `-member<I>`. This probe averages runs that were trained
separately (more seeds of a soup trained later, as single-run cvs), with the same library
calls as a soup's own last step: the runs' final models are averaged (write_average), scored
on the fold's held-out speakers with the first run's evaluation settings
(score_final_model), and recorded with soup_figures.

    python scripts/soup_probe.py OUT RUN [RUN ...] [--folds 1 2 3 4]
    python scripts/soup_probe.py cv-mix31x3 cv-mix31-cv-fold{fold}-seed0 \
        cv-mix31-cv-fold{fold}-seed1 cv-mix31-seed2-cv-fold{fold}

Each RUN is an experiment name with `{fold}` in it. Every run of a fold must have trained
on the fold's children (data.train's first manifest) and been scored on its held-out
speakers, from the same model (checked); further training manifests may differ, so one soup
can hold runs of different recipes (with and without the older speakers). The first run's
config is the soup's, unchanged but for its name, so that it loads as a config (a soup of
runs of one seed is no `training.soup_seeds`); its runs and their seeds are in its
metrics.json (`soup_of`, `soup.seeds`). It writes
experiments/OUT-cv-fold<i>/ (metrics.json, results.md, predictions_soup.jsonl),
checkpoints/OUT-cv-fold<i>/final, and experiments/OUT-cv/ (folds/, cv.json, cv.md). As
`kidwhisper cv --only-folds`, the summary holds every finished fold of OUT, those of earlier
calls too (on the same folds: checked), so a soup's folds can come from different runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path

import torch

from kidwhisper.config import Config, load_config, resolve_path
from kidwhisper.inference.folds import SUMMARY
from kidwhisper.training.cv import write_summary
from kidwhisper.training.cv_compare import finished_folds
from kidwhisper.training.experiments import (
    Experiment,
    score_final_model,
    soup_figures,
    write_average,
)

EXPERIMENTS = Path("experiments")


def run_config(name: str) -> Config:
    return load_config(EXPERIMENTS / name / "config.yaml")


def fold_of(config: Config) -> list:
    """A run's fold and model: the children it trained on (data.train's first manifest, the
    fold's own), the held-out speakers it was scored on, byte for byte, and its model block.
    Further data.train manifests (the older speakers) may differ: a soup across recipes."""
    own = [resolve_path(p).read_bytes() for p in (config.data.train[0], config.data.eval)]
    return [*own, config.model]


def check_same_fold(configs: list[Config]) -> None:
    """The runs of one fold share its children, its held-out speakers and the start model."""
    first = fold_of(configs[0])
    for other in configs[1:]:
        if fold_of(other) != first:
            raise SystemExit(f"{other.output.name}: its fold (data.train[0], data.eval) or "
                             f"model differs from {configs[0].output.name}'s")  # fmt: skip


def soup_fold(out: str, runs: list[str], fold: int) -> None:
    """Average the fold's runs into `<out>-cv-fold<fold>`, score it, record it."""
    names = [run.format(fold=fold) for run in runs]
    configs = [run_config(name) for name in names]
    check_same_fold(configs)
    config = copy.deepcopy(configs[0])
    config.output.name = f"{out}-cv-fold{fold}"
    metrics = [Experiment(c).read_metrics() for c in configs]
    unfinished = [n for n, m in zip(names, metrics, strict=True) if not m.get("finished")]
    if unfinished:
        raise SystemExit(f"{unfinished[0]}: not finished")
    experiment = Experiment(config).create(overwrite=True)
    write_average(experiment, [Experiment(c).model_dir for c in configs])
    after = score_final_model(experiment, torch.device("cpu"), "soup")
    figures = soup_figures(config, configs, metrics, after)
    figures.update(name=config.output.name, finished=True, soup_of=names)
    experiment.write_metrics(figures)
    experiment.write_results(figures)
    print(json.dumps({"fold": fold, "wer": after["wer"], "runs": figures["soup"]["mean_wer"]}))


def copy_folds(first: Config, out: str) -> Path:
    """The folds of the first run's cv into OUT's (its folds.json, for cv-compare's
    same-folds check); OUT's earlier folds must have been made on the very same folds.
    Returns the first run's cv folder."""
    source = resolve_path(first.data.eval).parent.parent
    target = EXPERIMENTS / f"{out}-cv" / "folds"
    old, new = target / SUMMARY, source / SUMMARY
    if old.is_file() and old.read_bytes() != new.read_bytes():
        raise SystemExit(f"{target}: {out}'s earlier folds differ from {source}'s")
    shutil.copytree(source, target, dirs_exist_ok=True)
    return source.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="name of the soup's cv (experiments/OUT-cv)")
    parser.add_argument("runs", nargs="+", help="run names with {fold}")
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    first = run_config(args.runs[0].format(fold=args.folds[0]))
    source = copy_folds(first, args.out)
    for fold in args.folds:
        soup_fold(args.out, args.runs, fold)
    # As `kidwhisper cv`'s summary: every finished fold of OUT, also those of earlier calls
    # (a soup's folds 1-2 from runs trained apart, 3-4 from one `soup_seeds` command).
    per_fold = [
        {"fold": i, "experiment": str(EXPERIMENTS / f"{args.out}-cv-fold{i}"), **result}
        for i, result in finished_folds(EXPERIMENTS, args.out).items()
    ]
    cv_json = json.loads((source / "cv.json").read_text(encoding="utf-8"))
    summary_config = copy.deepcopy(first)
    summary_config.output.name = args.out
    # The run's first manifest is its fold's training side; the cv's is the pooled one, so
    # that cv.json's extra_training holds only the manifests that train every fold.
    summary_config.data.train = [cv_json["pooled"][0], *first.data.train[1:]]
    out_dir = EXPERIMENTS / f"{args.out}-cv"
    write_summary(summary_config, out_dir, cv_json["folds"], cv_json["seed"], cv_json["pooled"],
                  per_fold)  # fmt: skip


if __name__ == "__main__":
    main()
