"""Experiment folders: `experiments/<name>/` with config.yaml, metrics.json and results.md.

The config is the resolved one (every default written out), so a folder alone says exactly
what ran; metrics.json holds the raw figures and results.md a readable summary.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch
import yaml

from kidwhisper.config import FULL, Config, dump_config, load_config
from kidwhisper.data.problems import DataProblems
from kidwhisper.files import (
    UnsafePathError,
    atomic_folder,
    atomic_write_text,
    check_plain_name,
    remove_owned,
)
from kidwhisper.inference.scoring import percent
from kidwhisper.models.card import write_model_card
from kidwhisper.training.checkpoint import code_version, looks_like_run
from kidwhisper.training.results import (
    card_facts,
    plot_learning_curve,
    results_markdown,
    trainable_share,
)


class ExperimentExistsError(FileExistsError):
    pass


class Experiment:
    """One run's folder under `output.experiments_dir` and its checkpoint folder."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = check_plain_name(config.output.name, "output.name")
        self.dir = Path(config.output.experiments_dir) / self.name
        self.checkpoint_dir = Path(config.output.checkpoints_dir) / self.name

    def read_metrics(self) -> dict:
        """metrics.json as written so far ({} when there is none yet)."""
        try:
            return json.loads((self.dir / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def finished(self) -> bool:
        return bool(self.read_metrics().get("finished"))

    def create(self, overwrite: bool = False) -> Experiment:
        """Make the folder; refuse to clobber a finished run unless `overwrite`."""
        if self.finished() and not overwrite:
            raise ExperimentExistsError(
                f"{self.dir} already holds a finished run: pass --overwrite to replace it, "
                f"or pick another name with output.name=..."
            )
        if overwrite:  # only the run's own folder, and only if training wrote it
            owner = self.config.output.checkpoints_dir
            remove_owned(self.checkpoint_dir, owner, looks_like_run, "run folder")
            for old in [*self.dir.glob("predictions_step*.jsonl"), *self.dir.glob("guard_*.jsonl")]:
                old.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / "config.yaml", dump_config(self.config))
        return self

    @property
    def model_dir(self) -> Path:
        return self.checkpoint_dir / "final"

    def write_metrics(self, metrics: dict) -> Path:
        return atomic_write_text(self.dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")

    def write_results(self, metrics: dict) -> Path:
        if metrics.get("loss_curve"):
            plot_learning_curve(metrics, self.dir / "learning_curve.png")
        text = results_markdown(self.name, self.config, metrics)
        return atomic_write_text(self.dir / "results.md", text)


def environment() -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
    return {
        "code_version": code_version(),
        "torch": torch.__version__,
        "device": device or platform.machine(),
        "python": platform.python_version(),
    }


def run_experiment(config: Config, overwrite: bool = False, resume: bool = False) -> dict:
    """Train as `config` says, recording everything in the experiment folder.

    An unfinished run of the same name continues from its latest checkpoint; a finished one
    is only replaced with `overwrite`. Rank 0 writes config.yaml first, then metrics.json and
    results.md after every evaluation (so a run that dies still leaves its figures), the dev
    predictions, and the final model in transformers layout under checkpoints/<name>/final.
    """
    from kidwhisper.training.checkpoint import latest_checkpoint
    from kidwhisper.training.loop import train

    experiment = Experiment(config)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if resume and latest_checkpoint(experiment.checkpoint_dir) is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {experiment.checkpoint_dir}")
    if is_main:
        experiment.create(overwrite)
    recorder = Recorder(experiment)
    _, state = train(config, on_eval=recorder if is_main else None)
    if is_main:
        averaged_from = write_final_model(experiment)
        recorder.metrics.update(model_dir=str(experiment.model_dir), finished=True)
        if averaged_from:
            recorder.metrics["eval_average"] = evaluate_average(
                config, experiment, averaged_from, recorder.device
            )
        recorder(state)
        write_model_card(experiment.model_dir, card_facts(config, recorder.metrics))
    return recorder.metrics


class Recorder:
    """The run's figures, written to metrics.json and results.md after every evaluation
    (the `on_eval` callback of `train`), with that evaluation's predictions."""

    def __init__(self, experiment: Experiment) -> None:
        from kidwhisper.device import pick_device, pick_dtype

        config = experiment.config
        self.experiment, self.start = experiment, time.perf_counter()
        self.device = pick_device(config.training.device)
        self.metrics: dict = {
            "name": experiment.name,
            "variant": config.model.variant,
            "pretrained": config.pretrained,
            "precision": str(pick_dtype(config.training.precision, self.device) or "fp32"),
            "environment": environment(),
            "finished": False,
        }

    def __call__(self, state, result=None, guard=None) -> None:
        from kidwhisper.inference.evaluation import save_predictions

        evals = state.evals
        self.metrics.update(
            # The starting model, scored in the window it was trained in (its audio_context).
            eval_before=evals[0] if evals and evals[0]["step"] == 0 else None,
            eval_after=evals[-1] if evals and evals[-1]["step"] > 0 else None,
            best_wer=state.best_wer,
            best_step=state.best_step,
            steps=state.step,
            samples=state.samples,
            train_utterances=state.train_utterances,
            train_seconds=state.train_seconds,
            peak_memory_mb=state.peak_memory_mb,
            trainable_params=state.trainable_params,
            total_params=state.total_params,
            stopped_early=state.stopped_early,
            loss_curve=state.loss_curve,
            evals=evals,
            bad_data=state.skipped,
            bad_data_summary=DataProblems(entries=state.skipped).summary(),
            bad_steps=state.bad_steps,
            wall_seconds=time.perf_counter() - self.start,
        )
        folder = self.experiment.dir
        if result is not None:
            save_predictions(result, folder / f"predictions_step{state.step}.jsonl")
        if guard is not None:
            save_predictions(guard, folder / f"guard_predictions_step{state.step}.jsonl")
        self.experiment.write_metrics(self.metrics)
        self.experiment.write_results(self.metrics)


def write_final_model(experiment: Experiment) -> list[Path]:
    """checkpoints/<name>/final: the last checkpoint's model, or the mean of the last K
    checkpoints' (training.average_last); returns the checkpoints averaged (none if one).
    The last step always ends with a checkpoint, so there is one to take."""
    from kidwhisper.models.averaging import average_checkpoints
    from kidwhisper.training.checkpoint import checkpoints, latest_checkpoint

    config = experiment.config
    sources = checkpoints(experiment.checkpoint_dir)[-config.training.average_last :]
    # final/ lies inside the run's own folder: replaced whole, once the new one is complete.
    with atomic_folder(experiment.model_dir, force=True) as tmp:
        if len(sources) > 1:
            average_checkpoints(sources, tmp, force=True)
        else:
            model = latest_checkpoint(experiment.checkpoint_dir) / "model"
            shutil.copytree(model, tmp, dirs_exist_ok=True)
        (tmp / "kidwhisper.yaml").write_text(dump_config(config), encoding="utf-8")
    return sources if len(sources) > 1 else []


def evaluate_average(config: Config, experiment: Experiment, sources: list, device) -> dict:
    """Score the averaged final model on data.eval (and the guard set) as the run's own
    evaluations are scored; its predictions go to predictions_average.jsonl."""
    from kidwhisper.data.dataset import load_utterances
    from kidwhisper.inference.evaluation import decoding_options, evaluate, save_predictions
    from kidwhisper.models.factory import load_model
    from kidwhisper.training.checkpoint import checkpoint_step

    wm = load_model(str(experiment.model_dir))
    wm.model.to(device)
    ev, limit = config.evaluation, config.data.max_eval_samples
    figures: dict = {"steps": [checkpoint_step(p) for p in sources]}
    for prefix, manifest in (("", config.data.eval), ("guard_", config.data.guard_eval)):
        if manifest:
            utterances = load_utterances([manifest], limit)
            result = evaluate(wm, utterances, ev.batch_size, decoding_options(ev))
            save_predictions(result, experiment.dir / f"{prefix}predictions_average.jsonl")
            figures.update({f"{prefix}{k}": v for k, v in result.summary().items()})
    return figures


# --- the seed's workflow: sequential folders, templates, a results table, archiving ---------

TEMPLATES = "templates"
RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"
MAIN_PY = '''"""Run this experiment: python -m experiments.{name}.main (or torchrun ... -m)."""

from kidwhisper.training.experiments import run_folder

run_folder(__file__)
'''


def _number(folder: Path) -> int | None:
    tail = folder.name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def new_experiment(kind: str, root: Path, source: str | None = None) -> Path:
    """Create `<root>/<kind>_<NNN>/` (the next number across all experiments) with the config
    of `source` (an experiment name or a config file; default the template) and a main.py."""
    check_plain_name(kind, "new-experiment NAME")
    root.mkdir(parents=True, exist_ok=True)
    numbers = [n for p in root.iterdir() if p.is_dir() and (n := _number(p)) is not None]
    folder = root / f"{kind}_{max(numbers, default=0) + 1:03d}"
    if source is None:
        config_file = root / TEMPLATES / "config_template.yaml"
    elif (root / source / "config.yaml").is_file():
        config_file = root / source / "config.yaml"
    else:
        config_file = Path(source)
    config = load_config(config_file, check_paths=False)
    # Relative, so the folder can be committed and cloned; main.py sets it again anyway.
    config.output.name, config.output.experiments_dir = folder.name, os.path.relpath(root)
    folder.mkdir()
    (folder / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    (folder / "main.py").write_text(MAIN_PY.format(name=folder.name), encoding="utf-8")
    (folder / "__init__.py").touch()
    if not (root / "__init__.py").exists():
        (root / "__init__.py").touch()
    return folder


def run_folder(main_file: str, argv: list[str] | None = None) -> dict:
    """Run the experiment whose folder holds `main_file` (what each main.py calls).
    Extra command-line arguments are config overrides (`training.lr=2e-5`)."""
    import logging
    import sys

    folder = Path(main_file).resolve().parent
    overrides = sys.argv[1:] if argv is None else argv
    overrides = [*overrides, f"output.name={folder.name}"]
    overrides.append(f"output.experiments_dir={os.path.relpath(folder.parent)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run_experiment(load_config(folder / "config.yaml", overrides))


def collect_results(root: Path) -> list[dict]:
    """One row per experiment with a metrics.json, in experiment order."""
    rows = []
    for path in sorted(root.glob("*/metrics.json"), key=lambda p: (_number(p.parent) or 0, p)):
        m = json.loads(path.read_text())
        before = _honest_before(path.parent, m.get("eval_before") or {})
        after = m.get("eval_average") or m.get("eval_after") or {}  # the final model's
        rows.append(
            {
                "name": path.parent.name,
                "variant": m.get("variant"),
                "steps": m.get("steps"),
                "before": before.get("wer"),
                "after": after.get("wer"),
                "best": m.get("best_wer"),
                "by_age": after.get("wer_by_age", {}),
                "minutes": (m.get("wall_seconds") or 0) / 60,
                "trainable": m.get("trainable_params"),
                "total": m.get("total_params"),
                "finished": m.get("finished", False),
            }
        )
    return rows


def _honest_before(folder: Path, before: dict) -> dict:
    """The "before" evaluation only if it scored the starting model in the window it was
    trained in (30 s for Whisper's own weights). Runs before that rule recorded no context:
    their figure counts only if the whole run used 30 s windows; else it is left out (n/a)."""
    if "audio_context" in before:
        return before
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return before if (saved.get("model") or {}).get("audio_context") == FULL else {}


def results_table(rows: list[dict]) -> str:
    lines = [
        "| experiment | variant | steps | WER before | WER after | best | WER by age (after) | "
        "minutes | trainable params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ages = ", ".join(f"{k}: {percent(v)}" for k, v in sorted(r["by_age"].items()))
        status = "" if r["finished"] else " (unfinished)"
        lines.append(
            f"| {r['name']}{status} | {r['variant']} | {r['steps']} | {percent(r['before'])} | "
            f"{percent(r['after'])} | {percent(r['best'])} | {ages} | {r['minutes']:.1f} | "
            f"{trainable_share(r['trainable'], r['total'])} |"
        )
    return "\n".join(lines)


def update_readme(readme: Path, table: str) -> None:
    """Replace the text between the results markers of `readme` (appending them if absent)."""
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    block = f"{RESULTS_START}\n{table}\n{RESULTS_END}"
    if RESULTS_START in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_START, 1)
        text = head + block + rest.split(RESULTS_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Latest results\n\n" + block + "\n"
    atomic_write_text(readme, text)


def archive(name: str, checkpoints_root: Path) -> Path:
    """Move `checkpoints/<name>` (weights, TensorBoard logs) to `checkpoints/archived/<name>`."""
    check_plain_name(name, "archive RUN")
    source = checkpoints_root / name
    target = checkpoints_root / "archived" / name
    if not source.is_dir() or source.is_symlink():
        raise FileNotFoundError(f"{source}: no such run to archive")
    if name == "archived" or not looks_like_run(source):
        raise UnsafePathError(
            f"{source}: not a run folder (no checkpoints, final model or TensorBoard logs); "
            "not moved"
        )
    if target.exists():
        raise FileExistsError(f"{target} already exists: rename or remove it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))
    return target
