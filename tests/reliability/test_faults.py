"""Faults during a run: NaN/inf steps, out of memory, signals, unwritable or full disks.

Memory exhaustion and NaN losses cannot be produced on demand from real data on a CPU, so
those two are injected at the loss function; everything around them (the step, the
optimizer, checkpoints, the CLI, a real `kidwhisper train` process) is the real thing.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kidwhisper.config import load_config
from kidwhisper.data.dataset import split_batch
from kidwhisper.data.sampling import batch_stream
from kidwhisper.models.factory import ModelFactory
from kidwhisper.training import checkpoint as ckpt
from kidwhisper.training import faults, objective
from kidwhisper.training.faults import TrainingError
from kidwhisper.training.loop import train
from kidwhisper.training.run import Run

from ..conftest import REPO

REAL_LOSS = objective.summed_loss
QUICKSTART_YAML = REPO / "configs" / "quickstart.yaml"


def _params_finite(wm) -> bool:
    return all(torch.isfinite(p).all() for p in wm.model.parameters())


def _nan_on(calls: set[int]):
    """summed_loss, but NaN on the given calls (1-based)."""
    count = {"n": 0}

    def loss(model, batch, *args, **kwargs):
        count["n"] += 1
        total, ce = REAL_LOSS(model, batch, *args, **kwargs)
        if count["n"] in calls:
            return total * float("nan"), ce * float("nan")
        return total, ce

    return loss


def test_nan_steps_are_skipped_and_counted(monkeypatch, quickstart_config):
    monkeypatch.setattr(objective, "summed_loss", _nan_on({2, 3}))
    wm, state = train(load_config(None, [*quickstart_config, "training.max_steps=4"]))
    assert state.step == 4 and state.bad_steps == 2
    assert [p["step"] for p in state.loss_curve] == [1, 2, 3, 4]  # skipped steps leave no point
    assert _params_finite(wm)


def test_too_many_nan_steps_in_a_row_stop_the_run(monkeypatch, quickstart_config):
    monkeypatch.setattr(objective, "summed_loss", _nan_on(set(range(2, 100))))
    config = load_config(None, [*quickstart_config, "training.max_bad_steps=3"])
    with pytest.raises(TrainingError, match="3 steps in a row had a NaN/inf loss") as err:
        train(config)
    assert "training.lr" in str(err.value)


def _oom_above(clips: int):
    def loss(model, batch, *args, **kwargs):
        if len(batch["utterance_ids"]) > clips:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return REAL_LOSS(model, batch, *args, **kwargs)

    return loss


def test_out_of_memory_fails_with_what_to_change(monkeypatch, quickstart_config):
    monkeypatch.setattr(objective, "summed_loss", _oom_above(2))
    with pytest.raises(TrainingError, match="out of memory at step 1") as err:
        train(load_config(None, quickstart_config))
    message = str(err.value)
    assert "micro-batches of up to 4 clips" in message and "peak" in message
    assert "training.on_oom: halve" in message and "gradient_accumulation_steps" in message


def test_out_of_memory_halves_micro_batches_and_goes_on(monkeypatch, quickstart_config):
    monkeypatch.setattr(objective, "summed_loss", _oom_above(1))
    wm, state = train(load_config(None, [*quickstart_config, "training.on_oom=halve"]))
    assert state.step == 4 and state.samples == 16 and _params_finite(wm)


def test_halved_micro_batches_give_the_same_update(quickstart_config):
    """Splitting a batch changes nothing but memory: the loss is summed over tokens and
    divided by the window's count, so the gradients are the same sums.

    The claim is about the accumulated gradients, so they are compared (as the optimizer
    receives them), not the weights after a step: Adam's first step is lr * sign(g) for
    every weight whose gradient is tiny, which turns a last-bit difference from another
    summation order (AVX2 vs AVX-512 kernels) into a difference of the learning rate's size.
    Float32 sums in another order differ by about sqrt(n) * 6e-8 of their magnitude; a
    wrong scale (a mean per micro-batch instead of one per window) differs by tens of %.
    """
    gradients = []
    for splits in (1, 4):
        config = load_config(None, [*quickstart_config, "training.precision=fp32"])
        run = Run(config)
        run.splits = splits
        run.model.train()
        seen: list[torch.Tensor] = []

        def keep(_optimizer, _args, _kwargs, seen=seen, model=run.model):
            grads = [p.grad.detach().flatten() for p in model.parameters() if p.grad is not None]
            seen.append(torch.cat(grads))

        run.optimizer.register_step_pre_hook(keep)
        run.train_step(batch_stream(run.loader, run.sampler, run.position, run.problems))
        gradients.append(seen[0].double())
    whole, split = gradients
    assert whole.norm() > 0
    # Each gradient entry sums over the window's tokens and, through the matmuls, over
    # widths up to 1536: about sqrt(4 * 1536) ~ 80 roundings in another order, so 100 float32
    # eps of the norm holds on any CPU; a wrong scale is off by tens of percent.
    tolerance = 100 * torch.finfo(torch.float32).eps
    assert (whole - split).norm() <= tolerance * whole.norm()


def test_split_batch_keeps_every_clip_once():
    batch = {
        "utterance_ids": list("abcde"),
        "indices": [0, 1, 2, 3, 4],
        "durations": [1.0] * 5,
        "errors": [("x", "bad")],
        "error_reasons": ["not audio"],
        "input_features": torch.arange(5.0).view(5, 1),
        "labels": torch.arange(5).view(5, 1),
    }
    parts = split_batch(batch, 2)
    assert [p["utterance_ids"] for p in parts] == [list("abc"), list("de")]
    assert torch.equal(torch.cat([p["input_features"] for p in parts]), batch["input_features"])
    assert [len(p["errors"]) for p in parts] == [1, 0]


# --- signals: a real `kidwhisper train` process ---------------------------------------------


def _start_training(overrides: list[str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "kidwhisper", "train", str(QUICKSTART_YAML), *overrides]
    with open(log, "w") as stderr:  # the child keeps its own handle
        # Its own process group, so that a signal to the group reaches it and its workers only.
        return subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True)],
    ids=["SIGTERM", "SIGINT", "SIGTERM-to-group-with-a-worker"],
)
def test_signal_writes_a_checkpoint_and_the_same_command_resumes(
    signum, to_group, tmp_path, quickstart_config
):
    """`to_group`: as Slurm, Ctrl-C and `pkill -f` do, the DataLoader's worker gets it too."""
    workers = ["data.num_workers=1"] if to_group else []
    overrides = [*quickstart_config, *workers, "training.max_steps=400"]
    overrides.append("training.log_every_steps=1")
    log = tmp_path / "stderr.log"
    proc = _start_training(overrides, log)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and log.read_text().count(" loss ") < 3:
        time.sleep(0.2)
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    proc.wait(timeout=120)
    err = log.read_text()
    assert proc.returncode == 128 + signum, err[-2000:]
    assert f"stopped by {signal.Signals(signum).name} at step" in err
    assert "run the same command again to resume" in err and "Traceback" not in err
    latest = ckpt.latest_checkpoint(tmp_path / "ckpt" / "run")
    stopped_at = int(ckpt.load_trainer_state(latest)["state"]["step"])
    assert 3 <= stopped_at < 400 and f"at step {stopped_at};" in err

    # The same command, with a near target, resumes from that checkpoint and finishes.
    again = [*overrides[:-2], f"training.max_steps={stopped_at + 2}"]
    done = subprocess.run(
        [sys.executable, "-m", "kidwhisper", "train", str(QUICKSTART_YAML), *again],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {latest} (step {stopped_at})" in done.stderr


# --- disks -------------------------------------------------------------------------------------


def test_unwritable_output_fails_before_the_model_loads(tmp_path, quickstart_config, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    loaded = []
    monkeypatch.setattr(ModelFactory, "create", lambda self: loaded.append(1))
    config = load_config(None, [*quickstart_config, f"output.checkpoints_dir={blocker}"])
    with pytest.raises(TrainingError, match=r"output\.checkpoints_dir: cannot write to"):
        Run(config)
    assert not loaded


def test_a_disk_without_room_for_a_checkpoint_fails_before_training(
    tmp_path, quickstart_config, monkeypatch
):
    usage = faults.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(faults.shutil, "disk_usage", lambda _: usage._replace(free=10 * 2**20))
    with pytest.raises(TrainingError, match=r"10 MB free; a checkpoint of this model needs"):
        Run(load_config(None, quickstart_config))


def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    tmp_path, quickstart_config, monkeypatch
):
    config = load_config(None, [*quickstart_config, "training.save_every_steps=1"])
    real_save = torch.save

    def full_disk_on_third(obj, path, *args, **kwargs):
        if "step_0000003" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", full_disk_on_third)
    with pytest.raises(OSError, match="could not write checkpoint step 3") as err:
        train(config)
    root = Path(config.output.checkpoints_dir) / "run"
    assert ckpt.latest_checkpoint(root).name == "step_0000002"
    assert "the latest complete checkpoint is still" in str(err.value)
    assert not list(root.glob(".step_*"))  # no half-written folder left behind
