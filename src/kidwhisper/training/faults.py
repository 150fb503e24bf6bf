"""Faults during a training run, and what the run does about each.

- SIGTERM / SIGINT (a scheduler's pre-emption, Ctrl-C): the step in progress finishes, a
  checkpoint is written and the run stops with `Interrupted`; the same command resumes it.
  A second signal of the same kind is not caught, so a stuck run can still be killed.
- Out of memory in a step: a `TrainingError` with the measured peak and what to change, or,
  with `training.on_oom: halve`, each micro-batch split in two (the same update, since the
  loss is divided by the window's token count) and the step retried.
- A NaN/inf loss or gradient: the step is skipped and counted (`BadSteps`); too many in a
  row stop the run with a `TrainingError`.
- An output folder that cannot be written, or a disk without room for a checkpoint: a
  `TrainingError` before training starts. Checkpoints are atomic (training/checkpoint.py), so a disk
  that fills up later never leaves a half-written one as the latest.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import uuid
from pathlib import Path

import torch

from kidwhisper.errors import UserError

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CHECKPOINT_BYTES_PER_PARAM = 12  # float32 weights + Adam's two float32 moments


class TrainingError(UserError, RuntimeError):
    """A run that cannot go on; the message says why and what to change."""


class Interrupted(Exception):
    """The run stopped on a signal after writing a checkpoint."""

    def __init__(
        self, signum: int, step: int, checkpoint: Path | None, where: str | None = None
    ) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        where = where or f"at step {step}; checkpoint {checkpoint}"
        super().__init__(f"stopped by {name} {where}: run the same command again to resume")


class StopSignals:
    """While active, SIGTERM and SIGINT only set `received` (first one wins); the previous
    handlers come back on exit. Only the main thread can install handlers: elsewhere this
    does nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
            log.warning(
                "%s received: finishing this step, then saving a checkpoint",
                signal.Signals(signum).name,
            )
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # next one is real

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def ignore_interrupts(worker_id: int) -> None:
    """DataLoader `worker_init_fn`. Ctrl-C, Slurm's pre-emption and `pkill -f` reach the whole
    process group: the workers leave them to the main process, which finishes its step
    (with their batches), checkpoints and then ends them. A SIGTERM from the main process
    itself (the DataLoader's shutdown, or multiprocessing's at exit) still ends a worker:
    ignoring that one too would leave the main process waiting for it forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the thread below takes it
    parent = os.getppid()
    threading.Thread(target=_end_on_sigterm_from, args=(parent,), daemon=True).start()


def _end_on_sigterm_from(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(128 + signal.SIGTERM)


# --- out of memory -------------------------------------------------------------------------


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def oom_message(step: int, micro_batch: int, peak_mb: float, device: torch.device) -> str:
    return (
        f"out of memory at step {step} on {device} with micro-batches of up to {micro_batch} "
        f"clips (peak {peak_mb:.0f} MB so far). Lower training.batch_size or "
        "training.batch_seconds and raise training.gradient_accumulation_steps to keep the "
        "global batch, turn on training.gradient_checkpointing, use precision bf16, or set "
        "training.on_oom: halve to split micro-batches automatically"
    )


# --- non-finite steps ----------------------------------------------------------------------


class BadSteps:
    """Tracks skipped non-finite steps in a row (the run total: TrainState.bad_steps);
    raises after `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit, self.in_a_row = limit, 0

    def record(self, finite: bool, step: int, loss: float, grad_norm: float) -> None:
        if finite:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        log.warning(
            "step %d: loss %s, gradient norm %s: step skipped (%d in a row)",
            step + 1,
            loss,
            grad_norm,
            self.in_a_row,
        )
        if self.in_a_row >= self.limit:
            raise TrainingError(
                f"{self.in_a_row} steps in a row had a NaN/inf loss or gradient (at step "
                f"{step + 1}): the run has diverged. Resume from the last checkpoint with a "
                "lower training.lr, a longer training.warmup_steps, or precision fp32/bf16 "
                "instead of fp16; training.max_bad_steps sets how many are tolerated"
            )


# --- the output folders --------------------------------------------------------------------


def check_writable(folder: Path, key: str) -> None:
    """Create `folder` and write a file in it, or raise naming the config key."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise TrainingError(
            f"{key}: cannot write to {folder} ({err.strerror or err}); choose a folder you "
            "can write to"
        ) from err


def check_free_space(folder: Path, params: int, key: str) -> None:
    """Room for one more checkpoint (the new one is written before old ones are pruned)."""
    needed = params * CHECKPOINT_BYTES_PER_PARAM
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise TrainingError(
            f"{key}: {folder} has {free / 2**20:.0f} MB free; a checkpoint of this model "
            f"needs about {needed / 2**20:.0f} MB. Free some space or point {key} elsewhere"
        )
