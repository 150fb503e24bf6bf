"""Accuracy side by side: the plain transformers recipe vs a kidwhisper config, scored by
speaker cross-validation on the same folds, in one run.

The shared children (so762 train + dev, 52 speakers) are split into K speaker folds
stratified by age (`kidwhisper split --folds`). On every fold both sides train on the other
folds' speakers and are scored on the fold's own: the plain side is the Hugging Face guide's
recipe (`Seq2SeqTrainer`, clips padded to 30 s; benchmarks/train_throughput.py's
`train_plain`, one seed), decoded at 30 s; the kidwhisper side is the config (default
configs/kids_recommended.yaml, its extra data.train manifests training every fold, as
`kidwhisper cv` does) over several seeds (a soup config, training.soup_seeds or
training.soup_members: one soup a fold, reported beside the mean of its runs). Both are
scored by kidwhisper's evaluation (competition normaliser, decoding guards): the plain side
greedy, as the recipe's `generate` decodes, the kidwhisper side as its config's evaluation
block says (beam 5 in kids_recommended.yaml). The table gives WER overall and per age bucket
as mean ± std [min–max] over folds (a fold's kidwhisper figure is its seeds' mean), the seed
spread, the per-fold difference and the wall time of each side.

    python benchmarks/accuracy.py                                 # 4 folds, hours on 2 cores
    python benchmarks/accuracy.py --variant base \
        --set model.variant=base model.pretrained=bundled:base
    python benchmarks/accuracy.py --quick                         # smoke run, ~2 minutes

Each fold's figures (each side, each seed) are kept in --results-dir as they are made, and a
later run with the same settings reads them back instead of training again: a stopped run
goes on where it was, and `--only-folds 1 2` on one machine or session with `--only-folds
3 4` on another share one table (`--skip-plain` / `--skip-kidwhisper` run one side).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from kidwhisper.config import EvaluationConfig, load_config
from kidwhisper.data.dataset import read_manifest
from kidwhisper.files import atomic_write_text
from kidwhisper.inference.evaluation import decoding_options, evaluate
from kidwhisper.inference.folds import HELDOUT, TRAIN, fold_dir, plan_folds, write_folds
from kidwhisper.inference.scoring import percent
from kidwhisper.models.factory import load_model
from kidwhisper.training.cv import cell, fold_configs, stats
from kidwhisper.training.experiments import is_soup, run_experiment

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput  # the plain recipe, beside this file

REPO = Path(__file__).resolve().parents[1]
SO762 = REPO.parent / "shared/data/so762-kids"
BUCKETS = ("5-7", "8-11", "12+")
PLAIN_SETTINGS = ("variant", "plain_epochs", "plain_batch_size", "plain_lr", "plain_eval_epochs",
                  "quick")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO / "configs/kids_recommended.yaml")
    pool = [SO762 / "train.jsonl", SO762 / "dev.jsonl"]
    p.add_argument("--pool", type=Path, nargs="+", default=pool, help="pooled into folds")
    p.add_argument("--set", nargs="+", default=[], help="config overrides: model.variant=base")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--fold-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", help="kidwhisper side (default 0 1 2)")
    p.add_argument("--variant", default="tiny.en", help="plain side: bundled tiny.en or base")
    p.add_argument("--plain-epochs", type=float, default=4.0)
    p.add_argument("--plain-batch-size", type=int, default=8)
    p.add_argument("--plain-lr", type=float, default=3e-5)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 folds of a few clips")
    p.add_argument("--plain-eval-epochs", type=int, nargs="+", default=[2, 3, 4],
                   help="score the plain side after these epochs; its best stands")  # fmt: skip
    p.add_argument("--skip-plain", action="store_true")
    p.add_argument("--skip-kidwhisper", action="store_true")
    p.add_argument("--only-folds", type=int, nargs="+",
                   help="run these folds (default all); others from --results-dir")  # fmt: skip
    p.add_argument("--out-dir", type=Path, help="folds, models, experiments (default: temp)")
    p.add_argument("--results-dir", type=Path,
                   help="per-fold figures, read back later (default OUT_DIR/results)")  # fmt: skip
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.quick:
        args.folds, args.plain_epochs, args.plain_eval_epochs = 2, 1.0, [1]
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    args.only_folds = args.only_folds or list(range(1, args.folds + 1))
    return args


# --quick: each fold's sides cut to a few clips spread over its speakers, one step each.
QUICK_CLIPS = {TRAIN: 8, HELDOUT: 6}
QUICK = ["training.max_steps=1", "training.batch_size=8", "training.eval_every_steps=null"]


def shrink(path: Path, keep: int) -> None:
    """Keep `keep` lines of a manifest, evenly spaced (so several speakers and buckets)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    atomic_write_text(path, "".join(lines[:: max(1, len(lines) // keep)][:keep]))


def heldout_figures(model_dir: Path, heldout: Path, context: str) -> dict:
    """WER overall and by age of a model on a fold's held-out speakers."""
    wm = load_model(str(model_dir), audio_context=context)
    utterances = read_manifest(heldout)
    result = evaluate(wm, utterances, 16, decoding_options(EvaluationConfig()), progress=False)
    return {"wer": result.wer, "wer_by_age": {b: r.wer for b, r in result.by_age.items()}}


def run_plain(args: argparse.Namespace, folder: Path, out: Path) -> dict:
    """The plain recipe on a fold, scored after each epoch in --plain-eval-epochs; its best
    epoch on the held-out speakers stands for it (the issue's "best of 2 to 4 epochs",
    chosen on the very speakers it is scored on, so generous to the plain side)."""
    start = time.perf_counter()
    clips = read_manifest(folder / TRAIN)
    recipe = argparse.Namespace(
        batch_size=args.plain_batch_size, lr=args.plain_lr, epochs=args.plain_epochs
    )
    trained = train_throughput.train_plain(recipe, clips, out, args.variant, save_epochs=True)
    scored = {
        epoch: heldout_figures(path, folder / HELDOUT, "full")
        for epoch, path in trained["epoch_checkpoints"].items()
        if epoch in args.plain_eval_epochs
    }
    if not scored:
        raise SystemExit(f"{out}: no checkpoint at epochs {args.plain_eval_epochs}")
    best = min(scored, key=lambda epoch: scored[epoch]["wer"])
    return {**scored[best], "epoch": best,
            "wer_by_epoch": {str(e): f["wer"] for e, f in scored.items()},
            "resumed": trained["resumed"], "train_seconds": trained["train_seconds"],
            "wall_seconds": time.perf_counter() - start}  # fmt: skip


def run_kidwhisper(args: argparse.Namespace, fold_config, seed: int | None, out: Path) -> dict:
    """One kidwhisper run on a fold (`seed` None: a soup config, its runs as it says)."""
    config = copy.deepcopy(fold_config)
    if seed is not None:
        config.training.seed = seed
        config.output.name = f"{fold_config.output.name}-seed{seed}"
    config.data.guard_eval = None  # the benchmark compares dev WER; the guard costs time
    config.evaluation.before_training = False
    config.output.experiments_dir = str(out / "experiments")
    config.output.checkpoints_dir = str(out / "checkpoints")
    start = time.perf_counter()
    metrics = run_experiment(config, overwrite=True)
    final = metrics.get("eval_average") or metrics["eval_after"]
    runs = [{"wer": m["wer"], "wer_by_age": m["wer_by_age"], "wall_seconds": 0.0}
            for m in metrics.get("soup", {}).get("members", [])]  # fmt: skip
    return {"wer": final["wer"], "wer_by_age": final["wer_by_age"],
            "train_seconds": metrics["train_seconds"], **({"runs": runs} if runs else {}),
            "wall_seconds": time.perf_counter() - start}  # fmt: skip


def fold_result(path: Path, settings: dict, compute: Callable[[], dict] | None) -> dict | None:
    """One fold's (or fold and seed's) figures, kept in `path` so that a stopped benchmark
    goes on where it was: read back when made with the same `settings`, else computed
    (None when `compute` is None: a fold this run leaves to another)."""
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["settings"] != settings:
            raise SystemExit(
                f"{path}: made with {saved['settings']}, not {settings}; "
                "use another --out-dir, or delete the file to redo it"
            )
        return saved["result"]
    if compute is None:
        return None
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"settings": settings, "result": result}, indent=1) + "\n")
    return result


def mean_over_seeds(runs: list[dict]) -> dict:
    by_age = {b: [r["wer_by_age"][b] for r in runs if b in r["wer_by_age"]] for b in BUCKETS}
    return {
        "wer": sum(r["wer"] for r in runs) / len(runs),
        "wer_by_age": {b: sum(v) / len(v) for b, v in by_age.items() if v},
        "seed_spread": max(r["wer"] for r in runs) - min(r["wer"] for r in runs),
        "wall_seconds": sum(r["wall_seconds"] for r in runs),
    }


def row(side: str, folds: list[dict], runs: int) -> dict:
    by_age = {b: [f["wer_by_age"][b] for f in folds if b in f["wer_by_age"]] for b in BUCKETS}
    return {
        "side": side,
        "runs": runs,
        "overall": stats([f["wer"] for f in folds]),
        "by_age": {b: stats(v) for b, v in by_age.items() if v},
        "seed_spread": stats([f.get("seed_spread", 0.0) for f in folds]),
        "wall_seconds": sum(f["wall_seconds"] for f in folds),
        # A resumed fold's file holds only its last invocation's time, not the whole run's.
        "resumed_folds": sum(bool(f.get("resumed")) for f in folds),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| side | runs | WER (mean ± std [min–max] over folds) | "
        + " | ".join(f"age {b}" for b in BUCKETS)
        + " | seed spread (mean) | wall s |",
        "|---|---|---|" + "---|" * len(BUCKETS) + "---|---|",
    ]
    for r in rows:
        ages = " | ".join(cell(r["by_age"][b]) if b in r["by_age"] else "n/a" for b in BUCKETS)
        wall = f"{r['wall_seconds']:.0f}"
        resumed, folds = r["resumed_folds"], r["overall"]["n"]
        if resumed:
            wall += f" ({resumed} of {folds} folds resumed: their last part only)"
        lines.append(
            f"| {r['side']} | {r['runs']} | {cell(r['overall'])} | {ages} | "
            f"{percent(r['seed_spread']['mean'])} | {wall} |"
        )
    return "\n".join(lines)


def repo_relative(path: Path) -> str:
    """`path` as recorded in the kept figures: relative to the repo when inside it, so that
    figures made in one checkout are read back in another."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def soup_fold(args: argparse.Namespace, fold_config, path: Path, run) -> dict | None:
    """A soup config's figures on a fold: the soup's WER, with its runs' seed spread and
    their mean (`one_run`: what one run of the config gives)."""
    settings = {"config": repo_relative(args.config), "set": args.set,
                "soup_seeds": fold_config.training.soup_seeds,
                "soup_members": fold_config.training.soup_members, "quick": args.quick}  # fmt: skip
    soup = fold_result(path, settings, run)
    if soup is None:
        return None
    one_run = {**mean_over_seeds(soup["runs"]), "wall_seconds": soup["wall_seconds"]}
    return {**soup, "seed_spread": one_run["seed_spread"], "one_run": one_run}


def run_folds(args: argparse.Namespace, configs: list, out: Path) -> tuple[dict, dict]:
    """Every fold's plain and kidwhisper figures ({fold: figures}), run here for the folds
    in --only-folds and read back from --results-dir for the others when present."""
    results = args.results_dir or out / "results"
    plain, ours = {}, {}
    plain_settings = {k: getattr(args, k) for k in PLAIN_SETTINGS}
    for i, fold_config in enumerate(configs, 1):
        here = i in args.only_folds
        folder = fold_dir(out / "folds", i)
        if not args.skip_plain:
            compute = partial(run_plain, args, folder, out / f"plain-fold{i}") if here else None
            found = fold_result(results / f"plain-fold{i}.json", plain_settings, compute)
            plain.update({i: found} if found else {})
        if args.skip_kidwhisper:
            continue
        if is_soup(fold_config):  # one soup a fold, its runs as the config says
            run = partial(run_kidwhisper, args, fold_config, None, out) if here else None
            soup = soup_fold(args, fold_config, results / f"kidwhisper-fold{i}-soup.json", run)
            ours.update({i: soup} if soup else {})
            continue
        runs = []
        for seed in args.seeds:
            settings = {"config": repo_relative(args.config), "set": args.set, "seed": seed,
                        "quick": args.quick}  # fmt: skip
            run = partial(run_kidwhisper, args, fold_config, seed, out) if here else None
            path = results / f"kidwhisper-fold{i}-seed{seed}.json"
            runs.append(fold_result(path, settings, run))
        if all(runs):
            ours[i] = mean_over_seeds(runs)
    return plain, ours


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = args.out_dir or Path(tempfile.mkdtemp(prefix="kidwhisper-accuracy-"))
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_folds(args.pool, args.folds, args.fold_seed)
    write_folds(args.pool, args.folds, out / "folds", args.fold_seed, force=True, plan=plan)
    for i in range(1, args.folds + 1) if args.quick else ():
        for name, keep in QUICK_CLIPS.items():
            shrink(fold_dir(out / "folds", i) / name, keep)
    config = load_config(args.config, [*args.set, *(QUICK if args.quick else [])])
    configs = fold_configs(config, out / "folds", args.folds, pooled=[0])
    env = train_throughput.machine()
    print(f"machine: {env['cpu']}, {env['cores']} cores; torch {env['torch']}")
    print(f"{args.folds} speaker folds of {', '.join(map(str, args.pool))}; out {out}")
    plain, ours = run_folds(args, configs, out)
    rows = [row(f"plain {args.variant}", list(plain.values()), 1)] if plain else []
    soup = len(config.training.soup_members or config.training.soup_seeds)
    if ours and soup:
        one_run = [f["one_run"] for f in ours.values()]
        rows.append(row(f"kidwhisper {args.config.name}, one run (mean of its runs)", one_run,
                        soup))  # fmt: skip
        rows.append(row(f"kidwhisper {args.config.name}: the soup of its {soup} runs",
                        list(ours.values()), soup))  # fmt: skip
    elif ours:
        rows.append(row(f"kidwhisper {args.config.name}", list(ours.values()), len(args.seeds)))
    print()
    print(f"folds with figures: plain {sorted(plain)}, kidwhisper {sorted(ours)}")
    print(markdown(rows))
    epochs = {i: {"best": f["epoch"], "wer": f["wer_by_epoch"]} for i, f in plain.items()}
    figures = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": env, "rows": rows,
               "plain_epochs": epochs}  # fmt: skip
    both = sorted(set(plain) & set(ours))
    if both:
        diff = stats([ours[i]["wer"] - plain[i]["wer"] for i in both])
        base = sum(plain[i]["wer"] for i in both) / len(both)
        relative = diff["mean"] / base if base else 0.0
        figures["difference"] = {**diff, "folds": both, "relative": relative}
        print(f"\nkidwhisper - plain, per fold ({len(both)} folds): {cell(diff)} "
              f"({100 * relative:+.1f}% relative)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


if __name__ == "__main__":
    main()
