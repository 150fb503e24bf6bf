"""Experiment folders: `experiments/<name>/` with config.yaml, metrics.json and results.md.

The config is the resolved one (every default written out), so a folder alone says exactly
what ran; metrics.json holds the raw figures and results.md a readable summary.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from pathlib import Path

import torch

import kidwhisper
from kidwhisper.config import Config, dump_config


class ExperimentExistsError(FileExistsError):
    pass


def code_version() -> str:
    """kidwhisper version plus the git commit when run from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(kidwhisper.__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"{kidwhisper.__version__}+{commit}"


class Experiment:
    """One run's folder under `output.experiments_dir` and its checkpoint folder."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.output.name
        self.dir = Path(config.output.experiments_dir) / self.name
        self.checkpoint_dir = Path(config.output.checkpoints_dir) / self.name

    def create(self, overwrite: bool = False) -> Experiment:
        if (self.dir / "metrics.json").exists() and not overwrite:
            raise ExperimentExistsError(
                f"{self.dir} already holds a finished run: pass --overwrite to replace it, "
                f"or pick another name with output.name=..."
            )
        if overwrite and self.checkpoint_dir.exists():
            shutil.rmtree(self.checkpoint_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.yaml").write_text(dump_config(self.config), encoding="utf-8")
        return self

    @property
    def model_dir(self) -> Path:
        return self.checkpoint_dir / "final"

    def write_metrics(self, metrics: dict) -> Path:
        path = self.dir / "metrics.json"
        path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        return path

    def write_results(self, metrics: dict) -> Path:
        path = self.dir / "results.md"
        path.write_text(results_markdown(self.name, self.config, metrics), encoding="utf-8")
        return path


def environment() -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
    return {
        "code_version": code_version(),
        "torch": torch.__version__,
        "device": device or platform.machine(),
        "python": platform.python_version(),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def results_markdown(name: str, config: Config, metrics: dict) -> str:
    """A human summary of a run: setup, WER before/after (overall and per age bucket)."""
    before, after = metrics.get("eval_before") or {}, metrics.get("eval_after") or {}
    t = config.training
    lines = [
        f"# {name}",
        "",
        f"- Model: `{config.model.variant}` from `{config.pretrained}`",
        f"- Training data: {', '.join(f'`{p}`' for p in config.data.train)} "
        f"({metrics.get('train_utterances', 0)} utterances)",
        f"- Evaluation data: `{config.data.eval}` ({after.get('utterances', 0)} utterances)",
        f"- Steps: {metrics.get('steps')} x batch {t.batch_size} x accumulation "
        f"{t.gradient_accumulation_steps}, lr {t.lr:g} ({t.lr_schedule}), "
        f"precision {metrics.get('precision')}",
        f"- Wall time: {metrics.get('wall_seconds', 0):.0f} s "
        f"(training {metrics.get('train_seconds', 0):.0f} s), "
        f"peak memory {metrics.get('peak_memory_mb', 0):.0f} MB",
        f"- Unreadable clips skipped: {len(metrics.get('unreadable_clips', {}))}",
        "",
        "## WER (competition normaliser, corpus WER)",
        "",
        "| | before | after |",
        "|---|---|---|",
        f"| overall | {_pct(before.get('wer'))} | {_pct(after.get('wer'))} |",
    ]
    buckets = sorted(set(before.get("wer_by_age", {})) | set(after.get("wer_by_age", {})))
    for bucket in buckets:
        b = before.get("wer_by_age", {}).get(bucket)
        a = after.get("wer_by_age", {}).get(bucket)
        lines.append(f"| age {bucket} | {_pct(b)} | {_pct(a)} |")
    curve = metrics.get("loss_curve", [])
    if curve:
        lines += [
            "",
            f"Training loss: {curve[0]['loss']:.3f} at step 1 -> {curve[-1]['loss']:.3f} "
            f"at step {curve[-1]['step']}.",
        ]
    lines += ["", f"Code {metrics.get('environment', {}).get('code_version', '?')}.", ""]
    return "\n".join(lines)


def run_experiment(config: Config, overwrite: bool = False) -> dict:
    """Train as `config` says, recording everything in the experiment folder.

    Writes config.yaml first, then metrics.json and results.md after every evaluation (so a
    run that dies still leaves its figures), the dev predictions, and the final model in
    transformers layout (with the resolved config beside it) under checkpoints/<name>/final.
    """
    from kidwhisper.evaluation import save_predictions
    from kidwhisper.training import pick_device, pick_dtype, train

    experiment = Experiment(config).create(overwrite)
    start = time.perf_counter()
    device = pick_device(config.training.device)
    metrics: dict = {
        "name": experiment.name,
        "variant": config.model.variant,
        "pretrained": config.pretrained,
        "precision": str(pick_dtype(config.training.precision, device) or "fp32"),
        "environment": environment(),
    }

    def record(state, result) -> None:
        key = "eval_before" if state.step == 0 else "eval_after"
        metrics[key] = result.summary()
        metrics.update(steps=state.step, samples=state.samples, loss_curve=state.loss_curve)
        metrics.update(evals=state.evals, unreadable_clips=state.unreadable)
        metrics["wall_seconds"] = time.perf_counter() - start
        save_predictions(result, experiment.dir / f"predictions_step{state.step}.jsonl")
        experiment.write_metrics(metrics)
        experiment.write_results(metrics)

    wm, state = train(config, on_eval=record)
    metrics.update(
        steps=state.step,
        samples=state.samples,
        train_utterances=state.train_utterances,
        train_seconds=state.train_seconds,
        peak_memory_mb=state.peak_memory_mb,
        loss_curve=state.loss_curve,
        evals=state.evals,
        unreadable_clips=state.unreadable,
        wall_seconds=time.perf_counter() - start,
    )
    wm.save(experiment.model_dir)
    (experiment.model_dir / "kidwhisper.yaml").write_text(dump_config(config), encoding="utf-8")
    metrics["model_dir"] = str(experiment.model_dir)
    experiment.write_metrics(metrics)
    experiment.write_results(metrics)
    return metrics
