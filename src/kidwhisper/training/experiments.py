"""Experiment folders: `experiments/<name>/` with config.yaml, metrics.json and results.md.

The config is the resolved one (every default written out), so a folder alone says exactly
what ran; metrics.json holds the raw figures and results.md a readable summary.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch
import yaml

from kidwhisper.config import Config, dump_config, soup_member_configs
from kidwhisper.data.problems import DataProblems
from kidwhisper.files import (
    atomic_folder,
    atomic_write_text,
    check_plain_name,
    remove_owned,
)
from kidwhisper.models.card import write_model_card
from kidwhisper.training.checkpoint import code_version, looks_like_run
from kidwhisper.training.results import (
    card_facts,
    plot_learning_curve,
    results_markdown,
)

log = logging.getLogger(__name__)


class ExperimentExistsError(FileExistsError):
    pass


# Keys that change how a run goes, not what it trains: a run resumed with another is the same.
HOW_NOT_WHAT = {"training.soup_jobs", "evaluation.score_soup_members"}


def _leaves(tree: dict, prefix: str = "") -> dict:
    """{"training.lr": 3e-05, ...} from a nested config dict."""
    leaves = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            leaves |= _leaves(value, f"{prefix}{key}.")
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


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

    def changed_keys(self) -> list[str]:
        """The config keys whose values differ between the folder's config.yaml (what ran)
        and this config ([] when they agree, or when nothing ran yet)."""
        try:
            saved = yaml.safe_load((self.dir / "config.yaml").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        now = yaml.safe_load(dump_config(self.config))  # as saved: lists, not tuples
        ran, now = _leaves(saved or {}), _leaves(now)
        keys = (ran.keys() | now.keys()) - HOW_NOT_WHAT
        return sorted(key for key in keys if ran.get(key) != now.get(key))

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
            # metrics.json too: a replacement that dies must not pass for the finished run.
            for old in [*self.dir.glob("predictions_step*.jsonl"), *self.dir.glob("guard_*.jsonl")]:
                old.unlink()
            (self.dir / "metrics.json").unlink(missing_ok=True)
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
    from kidwhisper.training.checkpoint import checkpoint_step, latest_checkpoint
    from kidwhisper.training.loop import train

    if is_soup(config):
        return run_soup(config, overwrite, resume)
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
            steps = {"steps": [checkpoint_step(p) for p in averaged_from]}
            figures = score_final_model(experiment, recorder.device, "average")
            recorder.metrics["eval_average"] = steps | figures
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
    from kidwhisper.training.checkpoint import checkpoints, latest_checkpoint

    config = experiment.config
    sources = checkpoints(experiment.checkpoint_dir)[-config.training.average_last :]
    if len(sources) > 1:
        write_average(experiment, sources)
        return sources
    # final/ lies inside the run's own folder: replaced whole, once the new one is complete.
    with atomic_folder(experiment.model_dir, force=True) as tmp:
        model = latest_checkpoint(experiment.checkpoint_dir) / "model"
        shutil.copytree(model, tmp, dirs_exist_ok=True)
        (tmp / "kidwhisper.yaml").write_text(dump_config(config), encoding="utf-8")
    return []


def write_average(experiment: Experiment, sources: list[Path]) -> None:
    """checkpoints/<name>/final as the uniform mean of `sources` (checkpoints or model
    folders), with this run's resolved config."""
    from kidwhisper.models.averaging import average_checkpoints

    with atomic_folder(experiment.model_dir, force=True) as tmp:
        average_checkpoints(sources, tmp, force=True)
        (tmp / "kidwhisper.yaml").write_text(dump_config(experiment.config), encoding="utf-8")


def score_final_model(experiment: Experiment, device, tag: str) -> dict:
    """Score the final model on data.eval (and the guard set) as the run's own evaluations
    are scored; its predictions go to predictions_<tag>.jsonl (guard_predictions_<tag>)."""
    from kidwhisper.data.dataset import load_utterances
    from kidwhisper.inference.evaluation import decoding_options, evaluate, save_predictions
    from kidwhisper.models.factory import load_model

    config = experiment.config
    wm = load_model(str(experiment.model_dir))
    wm.model.to(device)
    ev, limit = config.evaluation, config.data.max_eval_samples
    figures: dict = {}
    for prefix, manifest in (("", config.data.eval), ("guard_", config.data.guard_eval)):
        if manifest:
            utterances = load_utterances([manifest], limit)
            result = evaluate(wm, utterances, ev.batch_size, decoding_options(ev))
            save_predictions(result, experiment.dir / f"{prefix}predictions_{tag}.jsonl")
            figures.update({f"{prefix}{k}": v for k, v in result.summary().items()})
    return figures


# --- a soup of runs -------------------------------------------------------------------------


def is_soup(config: Config) -> bool:
    return bool(config.training.soup_seeds or config.training.soup_members)


def soup_members(config: Config) -> list[Config]:
    """The soup's runs, each an ordinary one: one per seed of training.soup_seeds, named
    `<name>-seed<S>`, or one per entry of training.soup_members, `<name>-member<I>`."""
    if config.training.soup_members:
        members = soup_member_configs(config)
        for i, member in enumerate(members):
            member.output.name = f"{config.output.name}-member{i}"
    else:
        members = []
        for seed in config.training.soup_seeds:
            member = copy.deepcopy(config)
            member.training.seed, member.training.soup_seeds = seed, []
            member.training.soup_jobs = 1
            member.output.name = f"{config.output.name}-seed{seed}"
            members.append(member)
    if not config.evaluation.score_soup_members:
        for member in members:  # trained alike; only the soup is decoded
            member.data.eval = member.data.guard_eval = None
    return members


def _finished_metrics(experiment: Experiment) -> dict:
    """A finished soup run's figures, if it ran this very config (else it is refused)."""
    changed = experiment.changed_keys()
    if changed:
        raise ExperimentExistsError(
            f"{experiment.dir} holds a finished run of another config than this soup's "
            f"member ({', '.join(changed)} differ): pass --overwrite to retrain it, or pick "
            "another output.name"
        )
    return experiment.read_metrics()


def regrows(experiment: Experiment) -> bool:
    """A finished soup asked for again with other seeds or members only: its average is
    redone (the finished runs it shares with the new soup are kept, the missing ones trained)."""
    changed = experiment.changed_keys()
    return bool(
        is_soup(experiment.config)
        and experiment.finished()
        and changed
        and set(changed) <= {"training.soup_seeds", "training.soup_members"}
    )


def run_soup(config: Config, overwrite: bool = False, resume: bool = False) -> dict:
    """training.soup_seeds: train one run per seed (a finished one is kept, an unfinished
    one resumes), then average their final models into this run's final model and score it.
    metrics.json: `eval_after` is the soup's evaluation, `soup` each run's and their mean."""
    from kidwhisper.training.checkpoint import latest_checkpoint
    from kidwhisper.training.side_by_side import Job, run_side_by_side

    experiment, members = Experiment(config), soup_members(config)
    folders = [Experiment(m) for m in members]
    if resume and not any(latest_checkpoint(f.checkpoint_dir) or f.finished() for f in folders):
        raise FileNotFoundError(f"--resume: no run of the soup {experiment.name} to resume")
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        regrow = not overwrite and regrows(experiment)
        if regrow:
            names = [m.output.name for m in members]
            log.info("%s: a soup of other runs now (%s): its finished runs are kept, its "
                     "average redone", experiment.dir, names)  # fmt: skip
        experiment.create(overwrite or regrow)
    recorder = Recorder(experiment)
    todo = [(m, f) for m, f in zip(members, folders, strict=True) if overwrite or not f.finished()]
    side_by_side = config.training.soup_jobs > 1 and len(todo) > 1
    if side_by_side:  # --resume insists on a checkpoint for the first run only, as below
        jobs = [Job(m.output.name, f.checkpoint_dir, (m, overwrite, resume and i == 0))
                for i, (m, f) in enumerate(todo)]  # fmt: skip
        run_side_by_side(run_experiment, jobs, config.training.soup_jobs)
    train_here = [] if side_by_side else [f for _, f in todo]  # an unfinished one resumes
    runs, started = [], False
    for member, folder in zip(members, folders, strict=True):
        if folder in train_here:
            # --resume insists on a checkpoint: only the first run not yet finished has one.
            runs.append(run_experiment(member, overwrite, resume and not started))
            started = True
        else:
            runs.append(_finished_metrics(folder))
    if not is_main:
        return recorder.metrics
    write_average(experiment, [f.model_dir for f in folders])
    after = score_final_model(experiment, recorder.device, "soup")
    recorder.metrics.update(soup_figures(config, members, runs, after))
    wall_seconds = time.perf_counter() - recorder.start
    recorder.metrics.update(model_dir=str(experiment.model_dir), wall_seconds=wall_seconds)
    recorder.metrics["finished"] = True
    experiment.write_metrics(recorder.metrics)
    experiment.write_results(recorder.metrics)
    write_model_card(experiment.model_dir, card_facts(config, recorder.metrics))
    return recorder.metrics


def soup_figures(config: Config, members: list[Config], runs: list[dict], after: dict) -> dict:
    """The soup's metrics from its runs' configs and metrics and its own evaluation `after`."""
    finals = [run.get("eval_average") or run.get("eval_after") or {} for run in runs]
    changes = config.training.soup_members or [{} for _ in members]
    figures = [
        {"name": run["name"], "seed": member.training.seed, "changes": change,
         "steps": run.get("steps"), "train_utterances": run.get("train_utterances"), **final}
        for run, member, change, final in zip(runs, members, changes, finals, strict=True)
    ]  # fmt: skip
    wers = [m["wer"] for m in figures if m.get("wer") is not None]
    first = runs[0]
    widest = max(runs, key=lambda run: run.get("train_utterances") or 0)  # all the soup's data
    return {
        "eval_before": first.get("eval_before"),
        "eval_after": after or None,
        "soup": {
            "seeds": [member.training.seed for member in members],
            "members": figures,
            "mean_wer": statistics.fmean(wers) if wers else None,
        },
        "steps": sum(run.get("steps") or 0 for run in runs),
        "samples": sum(run.get("samples") or 0 for run in runs),
        "train_seconds": sum(run.get("train_seconds") or 0 for run in runs),
        "peak_memory_mb": max(run.get("peak_memory_mb") or 0 for run in runs),
        **{key: widest.get(key) for key in SHARED_FIGURES},
    }


# One model in every run of a soup; one data set, less the extras a member leaves out.
SHARED_FIGURES = ("train_utterances", "trainable_params", "total_params", "bad_data_summary")
