"""Accuracy side by side: the plain transformers recipe vs a kidwhisper config, scored by
speaker cross-validation on the same folds, in one run.

The shared children (so762 train + dev, 52 speakers) are split into K speaker folds
stratified by age (`kidwhisper split --folds`). On every fold both sides train on the other
folds' speakers and are scored on the fold's own: the plain side is the Hugging Face guide's
recipe (`Seq2SeqTrainer`, clips padded to 30 s; benchmarks/train_throughput.py's
`train_plain`, one seed), decoded at 30 s; the kidwhisper side is the config (default
configs/kids_recommended.yaml, its extra data.train manifests training every fold, as
`kidwhisper cv` does) over several seeds. Both are decoded by kidwhisper's evaluation
(competition normaliser, greedy with its guards). The table gives WER overall and per age
bucket as mean ± std [min–max] over folds (a fold's kidwhisper figure is its seeds' mean),
the seed spread, the per-fold difference and the wall time of each side.

    python benchmarks/accuracy.py                                 # 4 folds, hours on 2 cores
    python benchmarks/accuracy.py --variant base \
        --set model.variant=base model.pretrained=bundled:base
    python benchmarks/accuracy.py --quick                         # smoke run, ~2 minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

from kidwhisper.config import EvaluationConfig, load_config
from kidwhisper.data.dataset import read_manifest
from kidwhisper.inference.evaluation import decoding_options, evaluate
from kidwhisper.inference.folds import HELDOUT, TRAIN, fold_dir, plan_folds, write_folds
from kidwhisper.inference.scoring import percent
from kidwhisper.models.factory import load_model
from kidwhisper.training.cv import cell, fold_configs, stats
from kidwhisper.training.experiments import run_experiment

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput  # the plain recipe, beside this file

REPO = Path(__file__).resolve().parents[1]
SO762 = REPO.parent / "shared/data/so762-kids"
BUCKETS = ("5-7", "8-11", "12+")


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
    p.add_argument("--skip-plain", action="store_true")
    p.add_argument("--out-dir", type=Path, help="folds, models, experiments (default: temp)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.quick:
        args.folds, args.plain_epochs = 2, 1.0
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    return args


# --quick: each fold's sides cut to a few clips spread over its speakers, one step each.
QUICK_CLIPS = {TRAIN: 8, HELDOUT: 6}
QUICK = ["training.max_steps=1", "training.batch_size=8", "training.eval_every_steps=null"]


def shrink(path: Path, keep: int) -> None:
    """Keep `keep` lines of a manifest, evenly spaced (so several speakers and buckets)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = lines[:: max(1, len(lines) // keep)][:keep]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(kept), encoding="utf-8")
    partial.replace(path)


def heldout_figures(model_dir: Path, heldout: Path, context: str) -> dict:
    """WER overall and by age of a model on a fold's held-out speakers."""
    wm = load_model(str(model_dir), audio_context=context)
    utterances = read_manifest(heldout)
    result = evaluate(wm, utterances, 16, decoding_options(EvaluationConfig()), progress=False)
    return {"wer": result.wer, "wer_by_age": {b: r.wer for b, r in result.by_age.items()}}


def run_plain(args: argparse.Namespace, folder: Path, out: Path) -> dict:
    start = time.perf_counter()
    clips = read_manifest(folder / TRAIN)
    recipe = argparse.Namespace(
        batch_size=args.plain_batch_size, lr=args.plain_lr, epochs=args.plain_epochs
    )
    trained = train_throughput.train_plain(recipe, clips, out, args.variant)
    figures = heldout_figures(trained["folder"], folder / HELDOUT, "full")
    return {**figures, "train_seconds": trained["train_seconds"],
            "wall_seconds": time.perf_counter() - start}  # fmt: skip


def run_kidwhisper(args: argparse.Namespace, fold_config, seed: int, out: Path) -> dict:
    config = copy.deepcopy(fold_config)
    config.training.seed = seed
    config.data.guard_eval = None  # the benchmark compares dev WER; the guard costs time
    config.evaluation.before_training = False
    config.output.name = f"{fold_config.output.name}-seed{seed}"
    config.output.experiments_dir = str(out / "experiments")
    config.output.checkpoints_dir = str(out / "checkpoints")
    start = time.perf_counter()
    metrics = run_experiment(config, overwrite=True)
    final = metrics.get("eval_average") or metrics["eval_after"]
    return {"wer": final["wer"], "wer_by_age": final["wer_by_age"],
            "train_seconds": metrics["train_seconds"],
            "wall_seconds": time.perf_counter() - start}  # fmt: skip


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
        lines.append(
            f"| {r['side']} | {r['runs']} | {cell(r['overall'])} | {ages} | "
            f"{percent(r['seed_spread']['mean'])} | {r['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)


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
    plain, ours = [], []
    for i, fold_config in enumerate(configs, 1):
        folder = fold_dir(out / "folds", i)
        if not args.skip_plain:
            plain.append(run_plain(args, folder, out / f"plain-fold{i}"))
        runs = [run_kidwhisper(args, fold_config, s, out) for s in args.seeds]
        ours.append(mean_over_seeds(runs))
    rows = [] if args.skip_plain else [row(f"plain {args.variant}", plain, 1)]
    rows.append(row(f"kidwhisper {args.config.name}", ours, len(args.seeds)))
    print()
    print(markdown(rows))
    figures = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": env, "rows": rows}
    if plain:
        diff = stats([o["wer"] - p["wer"] for o, p in zip(ours, plain, strict=True)])
        relative = diff["mean"] / rows[0]["overall"]["mean"] if rows[0]["overall"]["mean"] else 0
        figures["difference"] = diff
        print(f"\nkidwhisper - plain, per fold: {cell(diff)} ({100 * relative:+.1f}% relative)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


if __name__ == "__main__":
    main()
