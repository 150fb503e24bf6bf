"""Speaker cross-validation of one config: `kidwhisper cv CONFIG --folds K`.

The pooled manifests (default: data.train's first and data.eval, the shared children's
train and dev) are split into K speaker folds stratified by age (inference/folds.py). Fold i
is an ordinary experiment, `<name>-cv-fold<i>`: trained on the other folds' speakers plus
every other data.train manifest (extra speech such as older speakers, which is never held
out), evaluated on its own held-out speakers as data.eval. Mixing weights follow: the fold's
training manifest takes the pooled manifests' summed weight, and data.source_augment blocks
keep their manifests. Before a fold runs, its held-out speakers are checked against every
training manifest: none of them may be trained on.

A finished fold is not run again (an unfinished one resumes from its checkpoint), so the
same command continues a cross-validation. A finished fold of another config stops it,
except a soup asked for with other seeds or members: its finished runs are kept, the missing
ones trained and the average redone. The members of a soup of recipes
(training.soup_members) train on the fold as the config does, less the extras they weight 0.
`--only-folds` runs some folds only, so that several processes can share one. The folds are
recorded in `<experiments>/<name>-cv/folds/folds.json`; if the same command would now make
different folds (another seed, K or data) while fold experiments exist, it stops unless
--overwrite. At the end, cv.json and cv.md report WER overall and per age bucket as mean ±
standard deviation (over folds, n - 1 in the denominator) [min–max].
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from statistics import fmean

from kidwhisper.config import Config, resolve_path, source_index, validate
from kidwhisper.data.dataset import read_manifest
from kidwhisper.errors import UserError
from kidwhisper.files import atomic_write_text
from kidwhisper.inference.curation import speaker
from kidwhisper.inference.folds import HELDOUT, SUMMARY, TRAIN, fold_dir, plan_folds, write_folds
from kidwhisper.inference.scoring import percent
from kidwhisper.training.experiments import Experiment, regrows

log = logging.getLogger(__name__)


class CVError(UserError, ValueError):
    """A cross-validation that cannot run as asked; the message says why."""


def cv_dir(config: Config) -> Path:
    return Path(config.output.experiments_dir) / f"{config.output.name}-cv"


def pooled_indices(config: Config, pool: list[str] | None) -> list[int]:
    """The data.train manifests pooled into folds: `pool` (paths or short names), else the
    first. The rest are extra training data for every fold."""
    if not config.data.train:
        raise CVError("data.train: cross-validation needs a training manifest")
    keys = pool or [config.data.train[0]]
    return sorted({source_index(key, config.data.train) for key in keys})


def fold_configs(config: Config, folds_root: Path, k: int, pooled: list[int]) -> list[Config]:
    """One config per fold: its training side plus the extra manifests, its held-out side
    as data.eval, output.name `<name>-cv-fold<i>`."""
    data = config.data
    extras = [j for j in range(len(data.train)) if j not in pooled]
    new_index = {j: 0 for j in pooled} | {j: 1 + n for n, j in enumerate(extras)}
    configs = []
    for i in range(1, k + 1):
        fold = copy.deepcopy(config)
        folder = fold_dir(folds_root, i)
        fold.data.train = [str(folder / TRAIN), *(data.train[j] for j in extras)]
        if data.train_weights:
            fold.data.train_weights = fold_weights(data.train_weights, pooled, extras)
        fold.training.soup_members = [  # a member's weights follow the manifests too
            {key: fold_weights(value, pooled, extras) if key == "data.train_weights" else value
             for key, value in member.items()}
            for member in config.training.soup_members
        ]  # fmt: skip
        fold.data.source_augment = {
            fold.data.train[new_index[source_index(key, data.train)]]: block
            for key, block in data.source_augment.items()
        }
        fold.data.eval = str(folder / HELDOUT)
        fold.output.name = f"{config.output.name}-cv-fold{i}"
        validate(fold, f"cross-validation fold {i}")
        configs.append(fold)
    return configs


def fold_weights(weights: list, pooled: list[int], extras: list[int]) -> list[float]:
    """data.train_weights for a fold's manifests: the pooled ones' sum, then the extras'."""
    return [sum(float(weights[j]) for j in pooled), *(float(weights[j]) for j in extras)]


def check_disjoint(config: Config) -> None:
    """No speaker (nor utterance) of data.eval, the held-out side, in any data.train."""
    heldout = read_manifest(resolve_path(config.data.eval), require_text=False)
    speakers, ids = {speaker(u) for u in heldout}, {u.utterance_id for u in heldout}
    for path in config.data.train:
        for utt in read_manifest(resolve_path(path), require_text=False):
            if speaker(utt) in speakers or utt.utterance_id in ids:
                raise CVError(
                    f"{path}: {speaker(utt)} (utterance {utt.utterance_id}) is held out in "
                    f"{config.output.name}: a held-out speaker must never be trained on; "
                    "pool that manifest (--pool) instead of training on it"
                )


# --- the summary ---------------------------------------------------------------------------


def stats(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min, max and count."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}


def fold_result(metrics: dict) -> dict:
    """A finished fold's final-model figures (the averaged model's when there is one)."""
    final = metrics.get("eval_average") or metrics.get("eval_after") or {}
    if "wer" not in final:
        raise CVError(f"{metrics.get('name')}: no final evaluation in metrics.json")
    result = {"wer": final["wer"], "wer_by_age": final.get("wer_by_age", {})}
    if metrics.get("soup", {}).get("mean_wer") is not None:  # what one run gives, beside it
        runs = metrics["soup"]["members"]
        buckets = {b for run in runs for b in run.get("wer_by_age", {})}
        by_age = {b: fmean(run["wer_by_age"][b] for run in runs) for b in sorted(buckets)}
        result["runs"] = {"wer": metrics["soup"]["mean_wer"], "wer_by_age": by_age}
    return result


def summarize(per_fold: list[dict]) -> dict:
    """WER overall and per age bucket over folds (a bucket over the folds that have it);
    for soups, `runs`: the same over each fold's mean of one run."""
    buckets = sorted({b for f in per_fold for b in f["wer_by_age"]})
    summary = {
        "overall": stats([f["wer"] for f in per_fold]),
        "by_age": {
            b: stats([f["wer_by_age"][b] for f in per_fold if b in f["wer_by_age"]])
            for b in buckets
        },
    }
    if per_fold and all("runs" in f for f in per_fold):
        summary["runs"] = stats([f["runs"]["wer"] for f in per_fold])
        summary["soup_minus_run"] = stats([f["wer"] - f["runs"]["wer"] for f in per_fold])
    return summary


def cell(s: dict) -> str:
    """mean ± std [min–max] in percent."""
    return f"{percent(s['mean'])} ± {percent(s['std'])} [{percent(s['min'])}–{percent(s['max'])}]"


def markdown(name: str, per_fold: list[dict], summary: dict) -> str:
    head = " | ".join(f"fold {f['fold']}" for f in per_fold)
    lines = [
        f"# Speaker cross-validation: {name} ({len(per_fold)} folds)",
        "",
        "WER of each fold's final model on its held-out speakers; mean ± std [min–max].",
        "",
        f"| | mean ± std [min–max] | {head} |",
        "|---|---|" + "---|" * len(per_fold),
    ]
    rows = [("overall", summary["overall"], lambda f: f["wer"])]
    rows += [
        (f"age {b}", s, lambda f, b=b: f["wer_by_age"].get(b)) for b, s in summary["by_age"].items()
    ]
    for label, s, value in rows:
        cells = " | ".join(percent(value(f)) for f in per_fold)
        lines.append(f"| {label} | {cell(s)} | {cells} |")
    if "runs" in summary:  # soups: the mean of each fold's runs, and the soup's gain on it
        runs = [f["runs"]["wer"] for f in per_fold]
        cells = " | ".join(percent(v) for v in runs)
        lines.append(f"| one run (mean of the soup's runs) | {cell(summary['runs'])} | {cells} |")
        s = summary["soup_minus_run"]
        cells = " | ".join(f"{100 * (f['wer'] - f['runs']['wer']):+.2f}" for f in per_fold)
        lines.append(f"| soup - one run (points) | {100 * s['mean']:+.2f} ± "
                     f"{100 * s['std']:.2f} | {cells} |")  # fmt: skip
    return "\n".join(lines) + "\n"


# --- the run -------------------------------------------------------------------------------


def _check_same_folds(out: Path, new: dict, config: Config, k: int, overwrite: bool) -> None:
    """Stop when existing fold experiments were run on other folds than these."""
    summary = out / "folds" / SUMMARY
    if overwrite or not summary.is_file():
        return
    old = json.loads(summary.read_text(encoding="utf-8"))
    root = Path(config.output.experiments_dir)
    names = [f"{config.output.name}-cv-fold{i}" for i in range(1, k + 1)]
    started = [name for name in names if (root / name).is_dir()]
    if old.get("speakers") != new["speakers"] and started:
        raise CVError(
            f"{summary}: the folds differ from those {started[0]} ran on (another seed, K or "
            "data): pass --overwrite to run every fold again, or set output.name=..."
        )


def run_cv(
    config: Config,
    k: int,
    seed: int = 0,
    pool: list[str] | None = None,
    overwrite: bool = False,
    runner: Callable[..., dict] | None = None,
    only: list[int] | None = None,
) -> dict:
    """Cross-validate `config` over `k` speaker folds; `runner(config, overwrite=...)` runs
    one fold's experiment (default `run_experiment`). With `only`, just those folds run
    (several processes can share a cross-validation that way); the summary holds every
    finished fold. Returns what cv.json holds."""
    bad = sorted(set(only or []) - set(range(1, k + 1)))
    if bad:
        raise CVError(f"--only-folds {bad[0]}: folds are numbered 1 to {k}")
    if runner is None:
        from kidwhisper.training.experiments import run_experiment as runner
    out = cv_dir(config)
    pooled = pooled_indices(config, pool)
    manifests = [config.data.train[j] for j in pooled] + [config.data.eval] * bool(config.data.eval)
    if config.training.early_stopping_patience:
        log.warning("early stopping follows data.eval, here each fold's held-out speakers")
    paths = [resolve_path(m) for m in manifests]
    plan = plan_folds(paths, k, seed)
    _check_same_folds(out, plan.report.to_dict(), config, k, overwrite)
    write_folds(paths, k, out / "folds", seed, force=True, plan=plan)
    experiments = []
    for i, fold in enumerate(fold_configs(config, out / "folds", k, pooled), 1):
        check_disjoint(fold)
        experiments.append(Experiment(fold))
        mine = not only or i in only  # else another process's fold, or one for later
        if experiments[-1].finished() and not overwrite:
            if _kept(experiments[-1], i):
                log.info("fold %d: %s is finished, not run again", i, experiments[-1].dir)
            elif mine:  # a soup of other seeds: its runs are kept, its average redone
                runner(fold, overwrite=False)
        elif mine:
            log.info("fold %d of %d: %s", i, k, fold.output.name)
            runner(fold, overwrite=overwrite)
    per_fold = []
    for i, experiment in enumerate(experiments, 1):
        metrics = experiment.read_metrics()  # any process may have finished it meanwhile
        if metrics.get("finished") and not experiment.changed_keys():
            per_fold.append({"fold": i, "experiment": str(experiment.dir), **fold_result(metrics)})
    return write_summary(config, out, k, seed, manifests, per_fold)


def _kept(experiment: Experiment, fold: int) -> bool:
    """A finished fold of this very config is kept; one of a soup of other seeds is redone
    (False); one of any other config stops the cross-validation, which would report figures
    of a config it was not asked for."""
    changed = experiment.changed_keys()
    if not changed:
        return True
    if regrows(experiment):
        return False
    raise CVError(
        f"{experiment.dir}: fold {fold} finished with another config ({', '.join(changed[:3])}"
        f"{' ...' if len(changed) > 3 else ''} differ): pass --overwrite to run the folds "
        "again, or set output.name=... for a cross-validation of its own"
    )


def write_summary(
    config: Config, out: Path, k: int, seed: int, pooled: list[str], per_fold: list[dict]
) -> dict:
    """cv.json and cv.md in `out`, written atomically."""
    summary = summarize(per_fold)
    extras = [p for p in config.data.train if p not in pooled]
    result = {
        "name": config.output.name,
        "folds": k,
        "seed": seed,
        "pooled": pooled,
        "extra_training": extras,
        "per_fold": per_fold,
        "summary": summary,
    }
    atomic_write_text(out / "cv.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "cv.md", markdown(config.output.name, per_fold, summary))
    return result
