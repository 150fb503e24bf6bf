"""Two cross-validations side by side, fold by fold: `kidwhisper cv-compare BASE CANDIDATE`.

Folds are paired: fold i of both runs holds out the same speakers (checked on their
folds.json), so the difference fold by fold is the lever's effect on those children, free
of how hard they are. The verdict follows the project's rule of evidence (issue 18): a
candidate is better when its mean WER over the folds is below the baseline's by more than
the folds' standard deviation of the difference, and the 5-7 bucket is not worse on
average; worse when it is above by more than that spread; otherwise within the spread.
Unfinished folds are left out (a run stopped early is compared on the folds both have).

Either side may be several runs of one config on the same folds, other training seeds
(`cv-recommended,cv-recommended-s1`): each fold's figure is then their mean, over the folds
every run of that side finished, so that the fold-by-fold difference carries less of the
seed noise that one run per fold leaves in it. A soup's runs are named by their seed
(`cv-soup-seed0`, the run `cv-soup-cv-fold<i>-seed0` of each fold; `cv-soup-member0` in a
soup of recipes), so that a single run can be paired with one run of a soup, not with the
soup: `cv-soup-seed0,cv-soup-seed1`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from statistics import fmean

from kidwhisper.inference.folds import SUMMARY
from kidwhisper.training.cv import CVError, fold_result, stats

YOUNGEST = "5-7"  # the bucket a lever must not make worse
_FOLD = re.compile(r"-cv-fold(\d+)$")
# One run of a soup: `<soup name>-seed<S>` (training.soup_seeds), `-member<I>` (soup_members).
_SOUP_RUN = re.compile(r"^(.+)-((?:seed|member)\d+)$")


def cv_name(name: str) -> str:
    """`cv-recommended`, `cv-recommended-cv` or `experiments/cv-recommended-cv/` -> the name
    the fold experiments start with (`cv-recommended`)."""
    base = Path(name.rstrip("/")).name
    return base[: -len("-cv")] if base.endswith("-cv") else base


def _soup_run(experiments_dir: Path, name: str) -> tuple[str, str] | None:
    """(soup, run) when `name` is `<soup>-seed<S>` or `<soup>-member<I>` and no cv of that
    name exists (neither its `-cv` folder nor a fold): one run of the soup, not a cv."""
    run = _SOUP_RUN.match(name)
    if run and not any(experiments_dir.glob(f"{name}-cv*")):
        return run.group(1), run.group(2)
    return None


def _fold_metrics(experiments_dir: Path, name: str) -> dict[int, Path]:
    """Fold number -> metrics.json of `name`'s fold experiments: its own folds, or, for one
    run of a soup, the soup's run of that seed (or member) in each fold."""
    pattern, fold = f"{name}-cv-fold*", _FOLD
    run = _soup_run(experiments_dir, name)
    if run:
        soup, which = run
        pattern, fold = f"{soup}-cv-fold*-{which}", re.compile(rf"-cv-fold(\d+)-{which}$")
    found = {}
    for path in sorted(experiments_dir.glob(f"{pattern}/metrics.json")):
        match = fold.search(path.parent.name)
        if match:
            found[int(match.group(1))] = path
    return found


def finished_folds(experiments_dir: Path, name: str) -> dict[int, dict]:
    """Fold number -> its final model's figures, for every finished fold of `name`."""
    folds = {}
    for i, path in _fold_metrics(experiments_dir, name).items():
        metrics = json.loads(path.read_text(encoding="utf-8"))
        if metrics.get("finished"):
            folds[i] = fold_result(metrics)
    return folds


def _held_out(experiments_dir: Path, name: str) -> dict | None:
    run = _soup_run(experiments_dir, name)
    path = experiments_dir / f"{run[0] if run else name}-cv" / "folds" / SUMMARY
    return json.loads(path.read_text(encoding="utf-8")).get("speakers") if path.is_file() else None


def _difference(base: dict[int, dict], cand: dict[int, dict], bucket: str | None) -> dict:
    """Per-fold candidate - baseline WER (overall, or one bucket), with its stats."""

    def wer(fold: dict) -> float | None:
        return fold["wer"] if bucket is None else fold["wer_by_age"].get(bucket)

    pairs = {}
    for i in sorted(base.keys() & cand.keys()):
        a, b = wer(base[i]), wer(cand[i])
        if a is not None and b is not None:
            pairs[i] = (a, b)
    if not pairs:
        return {"folds": {}, "baseline": None, "candidate": None, "difference": None}
    return {
        "folds": {i: b - a for i, (a, b) in pairs.items()},
        "baseline": stats([a for a, _ in pairs.values()]),
        "candidate": stats([b for _, b in pairs.values()]),
        "difference": stats([b - a for a, b in pairs.values()]),
    }


def verdict(overall: dict, youngest: dict | None) -> str:
    """`better`, `worse`, `within the folds' spread` or `too few folds` (under 2)."""
    diff = overall["difference"]
    if diff is None or diff["n"] < 2:
        return "too few folds"
    young_worse = youngest is not None and youngest["difference"] is not None and (
        youngest["difference"]["mean"] > 0
    )  # fmt: skip
    if -diff["mean"] > diff["std"] and not young_worse:
        return "better"
    if diff["mean"] > diff["std"]:
        return "worse"
    return "within the folds' spread"


def _mean_result(results: list[dict]) -> dict:
    """One fold's figures averaged over runs (seeds): WER and each bucket they all have."""
    buckets = set.intersection(*(set(r["wer_by_age"]) for r in results))
    return {
        "wer": fmean(r["wer"] for r in results),
        "wer_by_age": {b: fmean(r["wer_by_age"][b] for r in results) for b in sorted(buckets)},
    }


def side_folds(experiments_dir: Path, names: list[str]) -> dict[int, dict]:
    """Fold number -> figures averaged over the runs `names`, for the folds all finished."""
    runs = []
    for name in names:
        runs.append(finished_folds(experiments_dir, name))
        if not runs[-1]:
            raise CVError(f"{experiments_dir}/{name}-cv-fold*: no finished fold to compare")
    common = set.intersection(*(set(run) for run in runs))
    if not common:
        raise CVError(f"{', '.join(names)}: no fold is finished by every one of these runs")
    return {i: _mean_result([run[i] for run in runs]) for i in sorted(common)}


def compare_cv(experiments_dir: Path, baseline: str, candidate: str) -> dict:
    """The paired comparison of two cross-validations run on the same folds; each side is a
    cv name or a comma-separated list of runs (seeds) averaged fold by fold."""
    base_names = [cv_name(n) for n in baseline.split(",") if n]
    cand_names = [cv_name(n) for n in candidate.split(",") if n]
    held_out = {n: _held_out(experiments_dir, n) for n in base_names + cand_names}
    known = {n: folds for n, folds in held_out.items() if folds is not None}
    first = next(iter(known), None)
    for name, folds in known.items():
        if folds != known[first]:
            raise CVError(
                f"{first} and {name} were run on different folds (their folds.json differ): "
                "compare runs made with the same --folds, --seed and pooled data"
            )
    base = side_folds(experiments_dir, base_names)
    cand = side_folds(experiments_dir, cand_names)
    buckets = sorted({k for f in [*base.values(), *cand.values()] for k in f["wer_by_age"]})
    overall = _difference(base, cand, None)
    by_age = {bucket: _difference(base, cand, bucket) for bucket in buckets}
    return {
        "baseline": " + ".join(base_names),
        "candidate": " + ".join(cand_names),
        "runs": {"baseline": len(base_names), "candidate": len(cand_names)},
        "folds": sorted(base.keys() & cand.keys()),
        "overall": overall,
        "by_age": by_age,
        "verdict": verdict(overall, by_age.get(YOUNGEST)),
    }


def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def _runs_note(runs: dict) -> str:
    several = {side: n for side, n in runs.items() if n > 1}
    if not several:
        return ""
    sides = " and ".join(f"the {side}'s {n}" for side, n in several.items())
    return f" Each fold's figure is the mean of {sides} runs (seeds)."


def markdown(result: dict) -> str:
    """The comparison as a table: means, the difference (points) mean ± std, per fold."""
    folds = result["folds"]
    head = " | ".join(f"fold {i}" for i in folds)
    lines = [
        f"# {result['candidate']} against {result['baseline']} ({len(folds)} paired folds)",
        "",
        "WER mean over the folds; difference = candidate - baseline in WER points, negative "
        "is better." + _runs_note(result["runs"]),
        "",
        f"| | {result['baseline']} | {result['candidate']} | difference ± std | {head} |",
        "|---|---|---|---|" + "---|" * len(folds),
    ]
    rows = [("overall", result["overall"])] + [(f"age {b}", d) for b, d in result["by_age"].items()]
    for label, d in rows:
        if d["difference"] is None:
            continue
        diff = d["difference"]
        cells = " | ".join(_points(d["folds"][i]) if i in d["folds"] else "n/a" for i in folds)
        lines.append(
            f"| {label} | {100 * d['baseline']['mean']:.2f}% | {100 * d['candidate']['mean']:.2f}% "
            f"| {_points(diff['mean'])} ± {100 * diff['std']:.2f} | {cells} |"
        )
    lines += ["", f"Verdict: {result['verdict']}."]
    return "\n".join(lines) + "\n"
