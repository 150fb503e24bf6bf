"""Training recipe: fine-tune a Whisper model as a config describes, on 1 or N processes.

The loop around `run.Run`'s step: evaluate before training, take steps until the
schedule ends (or early stopping, or a signal), evaluate and checkpoint on the way, and
log to the console, the progress bar and TensorBoard. Faults it meets are training/faults.py's.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from tqdm import tqdm

from kidwhisper.config import Config
from kidwhisper.data.sampling import batch_stream
from kidwhisper.device import peak_memory_mb
from kidwhisper.models.factory import WhisperModel
from kidwhisper.training import distributed, faults
from kidwhisper.training.checkpoint import TrainState
from kidwhisper.training.run import Run

log = logging.getLogger(__name__)


# --- the loop ------------------------------------------------------------------------------


def train(config: Config, on_eval=None, resume: bool = True) -> tuple[WhisperModel, TrainState]:
    """Fine-tune as `config` says; `on_eval(state, result)` runs on rank 0 after each
    evaluation (with `guard=` the guard set's result when data.guard_eval is set). With
    `resume`, a run with checkpoints continues from the latest."""
    run = Run(config)
    resumed = resume and run.resume()
    state = run.state
    writer = _tensorboard(run.root) if run.dist.is_main else None
    log.info(
        "training %s on %d clips x %d process(es): %d steps, global batch %d",
        run.wm.variant.name,
        state.train_utterances,
        run.dist.world_size,
        run.total_steps,
        config.training.batch_size
        * config.training.gradient_accumulation_steps
        * run.dist.world_size,
    )
    if config.evaluation.before_training and not resumed:
        # The starting model in the window it was trained in (30 s for Whisper's own
        # weights): scored with the short input it never saw, it would look far worse.
        evaluate_and_save(run, writer, on_eval, context=run.wm.trained_context)
    start_step = state.step
    try:
        _steps(run, writer, on_eval)
    except faults.Interrupted:
        run.close()  # every process stops here together, after the checkpoint
        raise
    finally:
        if writer:
            writer.close()
    run.gather_problems()
    state.peak_memory_mb = max(state.peak_memory_mb, peak_memory_mb(run.device))
    log.info("trained %d steps, %.0f s in all", state.step - start_step, state.train_seconds)
    log.info("training data: %s", run.problems.summary())
    run.close()  # the last collective is behind us
    return run.wm, state


def _steps(run: Run, writer, on_eval) -> None:
    """Optimisation steps until the schedule ends, early stopping, or a signal (which
    checkpoints and raises `faults.Interrupted` on every process)."""
    state = run.state
    batches = batch_stream(run.loader, run.sampler, run.position, run.problems)
    run.model.train()
    progress = tqdm(
        total=run.total_steps, initial=state.step, desc="training", disable=not run.dist.is_main
    )
    with progress, faults.StopSignals() as signals:
        while state.step < run.total_steps:
            step_start = time.perf_counter()
            loss, grad_norm, taken = run.train_step(batches)
            state.train_seconds += time.perf_counter() - step_start  # kept across resumes
            state.bad_steps += not taken
            run.bad_steps.record(taken, state.step, loss, grad_norm)
            due = taken and after_step(run, writer, progress, loss, grad_norm, step_start)
            if due and evaluate_and_save(run, writer, on_eval) and state.step < run.total_steps:
                log.info("early stop: %d evaluations without a better WER",
                         state.evals_without_improvement)  # fmt: skip
                state.stopped_early = True
                return
            if distributed.all_reduce_sum(signals.received is not None, run.device):
                signum = signals.received or signal.SIGTERM  # another process got it
                raise faults.Interrupted(signum, state.step, run.save_now())


def evaluate_and_save(run: Run, writer, on_eval, context: str | float | None = None) -> bool:
    """Evaluate (the dev set, and the guard set beside it), checkpoint, and say whether
    early stopping has run out of patience. The guard set is only reported: stopping and
    the best checkpoint follow data.eval."""
    state = run.state
    state.peak_memory_mb = max(state.peak_memory_mb, peak_memory_mb(run.device))
    result = run.evaluate(context=context)
    guard = run.evaluate(run.guard_set, context) if result is not None else None
    if result is not None:
        _record_eval(run, writer, result, guard, context)
        if on_eval and run.dist.is_main:
            on_eval(state, result, **({"guard": guard} if guard is not None else {}))
    if state.step > 0:
        run.save(result.wer if result else None)
    patience = run.config.training.early_stopping_patience
    return bool(patience and state.evals_without_improvement >= patience)


def _record_eval(run: Run, writer, result, guard, context: str | float | None) -> None:
    """An evaluation into the state (curve, best step, patience), the log and TensorBoard."""
    state = run.state
    guard_figures = {f"guard_{k}": v for k, v in guard.summary().items()} if guard else {}
    used = run.wm.audio_context if context is None else context
    state.evals.append(
        {"step": state.step, **result.summary(), **guard_figures, "audio_context": used}
    )
    log.info("step %d: dev WER %.4f (audio context %s)", state.step, result.wer, used)
    if guard is not None:
        log.info("step %d: guard WER %.4f", state.step, guard.wer)
    if state.best_wer is None or result.wer < state.best_wer:
        state.best_wer, state.best_step = result.wer, state.step
        state.evals_without_improvement = 0
    else:
        state.evals_without_improvement += 1
    if writer:
        writer.add_scalar("eval/wer", result.wer, state.step)
        if guard is not None:
            writer.add_scalar("eval/guard_wer", guard.wer, state.step)


def after_step(run: Run, writer, progress, loss: float, grad_norm: float, start: float) -> bool:
    """Record a taken step (curve, progress bar, TensorBoard, log, periodic checkpoint);
    True when an evaluation is due."""
    state, tc = run.state, run.config.training
    lr = run.scheduler.get_last_lr()[0]
    progress.update(1)
    progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
    state.loss_curve.append({"step": state.step, "loss": loss, "lr": lr, "grad_norm": grad_norm})
    if writer:
        _log_step(writer, state, loss, lr, grad_norm, time.perf_counter() - start, run)
    if state.step % tc.log_every_steps == 0:
        log.info("step %d loss %.4f lr %.2e", state.step, loss, lr)
    if state.step == run.total_steps or (
        tc.eval_every_steps and state.step % tc.eval_every_steps == 0
    ):
        return True
    if tc.save_every_steps and state.step % tc.save_every_steps == 0:
        run.save(None)
    return False


def _tensorboard(root: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(root / "tensorboard"))


def _log_step(writer, state: TrainState, loss, lr, grad_norm, seconds: float, run: Run) -> None:
    """Scalars of one step; `samples` and `audio` are this step's, on this process."""
    samples, audio = state.samples - run.logged[0], state.audio_seconds - run.logged[1]
    run.logged = (state.samples, state.audio_seconds)
    writer.add_scalar("train/loss", loss, state.step)
    writer.add_scalar("train/lr", lr, state.step)
    writer.add_scalar("train/grad_norm", grad_norm, state.step)
    writer.add_scalar("train/samples_per_second", samples / seconds, state.step)
    writer.add_scalar("train/audio_seconds_per_second", audio / seconds, state.step)
    writer.add_scalar("memory/peak_mb", peak_memory_mb(run.device), state.step)
