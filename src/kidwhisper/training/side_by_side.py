"""A soup's members trained side by side, each in a process of its own (training.soup_jobs).

For a machine where one training run leaves cores idle (a small model on many CPU cores):
there, several members at once, each with its share of the threads, finish a soup sooner than one
after another. Where one run keeps every core busy it gains nothing (base on 2 cores: two
side by side take 6.4-6.9 s a step each, one alone 3.3 s). Each member is an ordinary run
(its folders, checkpoints and resume alike).

Signals: each member runs in a process group of its own, so only this process passes a
SIGTERM/SIGINT on to them, once for each it receives (a signal to the whole group, as Slurm,
Ctrl-C and `pkill -f` send, would otherwise reach them twice). At the first, the members
finish their step, checkpoint and stop; at a second they die, as a lone run would.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

import torch

from kidwhisper.errors import USER_ERRORS
from kidwhisper.training.checkpoint import checkpoint_step, latest_checkpoint
from kidwhisper.training.faults import STOP_SIGNALS, Interrupted, TrainingError

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One member: its name (the process's, in its log lines), checkpoint folder and the
    arguments of the function that trains it."""

    name: str
    checkpoint_dir: Path
    args: tuple


def _member(target: Callable, args: tuple, threads: int, level: int) -> None:
    """A member's process: its own group and share of the cores, then the run itself."""
    os.setpgrp()  # signals reach it through the parent only (see the module's docstring)
    torch.set_num_threads(threads)
    name = multiprocessing.current_process().name
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        target(*args)
    except Interrupted as err:  # a checkpoint was written
        log.warning("%s", err)
        sys.exit(128 + err.signum)
    except USER_ERRORS as err:  # one line, as the command line gives it
        log.error("%s", err)
        sys.exit(2)


def run_side_by_side(target: Callable, jobs: list[Job], at_once: int) -> None:
    """`target(*job.args)` for every job, `at_once` at a time in spawned processes that share
    this process's threads. A member that fails stops the others at a checkpoint."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainingError("training.soup_jobs: runs side by side are for one process; under "
                            "torchrun set training.soup_jobs=1")  # fmt: skip
    at_once = min(at_once, len(jobs))
    shares = thread_shares(len(jobs), at_once, torch.get_num_threads())
    log.info("training %d runs, %d at a time with %d threads each%s: %s", len(jobs), at_once,
             shares[0][0], _last_round(shares), ", ".join(job.name for job in jobs))  # fmt: skip
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    level = logging.getLogger().getEffectiveLevel()
    pending, running = list(zip(jobs, shares, strict=True)), {}
    received: list[int] = []
    failed: list[tuple[Job, int]] = []

    def pass_on(signum: int, frame) -> None:
        received.append(signum)
        log.warning("%s received: passed on to %s", signal.Signals(signum).name,
                    ", ".join(job.name for job, _, _ in running.values()) or "no run")  # fmt: skip
        for _, process, _ in running.values():
            _signal(process, signum)

    previous = {signum: signal.signal(signum, pass_on) for signum in STOP_SIGNALS}
    try:
        while running or (pending and not received and not failed):
            while pending and len(running) < at_once and not received and not failed:
                job, (threads, after_rounds) = pending[0]
                if after_rounds and any(not last for _, _, last in running.values()):
                    break  # the last, partial round waits for the full rounds to end
                pending.pop(0)
                process = context.Process(target=_member, name=job.name,
                                          args=(target, job.args, threads, level))  # fmt: skip
                process.start()
                running[job.name] = (job, process, after_rounds)
            wait([process.sentinel for _, process, _ in running.values()], timeout=1.0)
            for name, (job, process, _) in list(running.items()):
                if process.exitcode is None:
                    continue
                del running[name]
                if process.exitcode != 0 and not received and not failed:
                    failed.append((job, process.exitcode))
                    for _, other, _ in running.values():  # checkpoint and stop
                        _signal(other, signal.SIGTERM)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _report(jobs, [job for job, _ in pending], received, failed)


def thread_shares(jobs: int, at_once: int, threads: int) -> list[tuple[int, bool]]:
    """Each job's threads, and whether it waits for the full rounds to end. Runs of one
    recipe take about as long each, so jobs go in rounds of `at_once`; a last, partial
    round (the seventh of 7 runs 2 at a time) would leave threads idle beside it, so its
    jobs start once every earlier job has ended and share all the threads."""
    full, rest = divmod(jobs, at_once)
    shares = [(max(1, threads // at_once), False)] * (full * at_once)
    return shares + [(max(1, threads // max(rest, 1)), True)] * rest


def _last_round(shares: list[tuple[int, bool]]) -> str:
    last = [threads for threads, after_rounds in shares if after_rounds]
    return f"; the last {len(last)} after them with {last[0]} each" if last else ""


def _signal(process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has just ended
        os.kill(process.pid, signum)


def _report(jobs: list[Job], pending: list[Job], received: list[int], failed: list) -> None:
    """Raise for a stopped or failed soup, naming where each started run stands."""
    if not (received or failed):
        return
    stood = []
    for job in jobs:
        if job in pending:
            continue
        latest = latest_checkpoint(job.checkpoint_dir)
        at = f"step {checkpoint_step(latest)}, {latest}" if latest else "no checkpoint"
        stood.append(f"{job.name} ({at})")
    if failed:
        job, code = failed[0]
        raise TrainingError(
            f"soup member {job.name} failed (exit {code}; its error is logged above); the "
            f"others were stopped: {'; '.join(stood)}. Fix it and run the same command again: "
            "finished members are kept and stopped ones resume"
        )
    raise Interrupted(received[0], step=0, checkpoint=None, where=f"with {'; '.join(stood)}")
