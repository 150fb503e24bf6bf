"""Real torchrun (2 CPU processes, gloo) against 1 process, and kill -9 then resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _args(manifest: Path, tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [
        "train",
        str(REPO / "configs/quickstart.yaml"),
        f"data.train={manifest}",
        f"data.eval={manifest}",
        "data.max_train_samples=8",
        "data.max_eval_samples=2",
        "data.num_workers=0",
        "training.lr=1e-4",
        "training.warmup_steps=0",
        "training.lr_schedule=constant",
        "evaluation.before_training=false",
        "evaluation.max_new_tokens=8",
        f"output.experiments_dir={tmp_path / 'experiments'}",
        f"output.checkpoints_dir={tmp_path / 'checkpoints'}",
        f"output.name={name}",
        *extra,
    ]


def _env() -> dict:
    # One thread per process: two processes share this machine's two cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(args: list[str], nproc: int = 1) -> None:
    if nproc == 1:
        cmd = [sys.executable, "-m", "kidwhisper", *args]
    else:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd = [*torchrun, f"--nproc_per_node={nproc}", "-m", "kidwhisper", *args]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def _metrics(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "experiments" / name / "metrics.json").read_text())


def _weights(tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(tmp_path / "checkpoints" / name / "final" / "model.safetensors")


def test_ddp_and_fsdp_match_one_process_with_the_same_global_batch(
    real_manifest: Path, tmp_path: Path
):
    steps = ["training.max_steps=2"]
    _run(_args(real_manifest, tmp_path, "one", *steps, "training.batch_size=4"))
    _run(
        _args(
            real_manifest,
            tmp_path,
            "accum",
            *steps,
            "training.batch_size=2",
            "training.gradient_accumulation_steps=2",
        )
    )
    _run(_args(real_manifest, tmp_path, "two", *steps, "training.batch_size=2"), nproc=2)
    fsdp = ["training.batch_size=2", "training.strategy=fsdp"]
    _run(_args(real_manifest, tmp_path, "fsdp", *steps, *fsdp), nproc=2)

    names = ("one", "accum", "two", "fsdp")
    one, *others = (_metrics(tmp_path, n)["loss_curve"] for n in names)
    for curve in others:
        assert [p["step"] for p in curve] == [1, 2]
        for a, b in zip(one, curve, strict=True):
            assert abs(a["loss"] - b["loss"]) < 1e-4 * abs(a["loss"]), (one, curve)
    reference = _weights(tmp_path, "one")
    for name in names[1:]:
        weights = _weights(tmp_path, name)
        assert weights.keys() == reference.keys(), name
        # Not bit for bit: the gradients are summed in another order, and Adam can turn a
        # last-bit change of a near-zero gradient into a step of up to lr; 5e-4 is above
        # 2 * max_steps * lr (4e-4), the most two runs can then differ, on any CPU.
        for key, tensor in weights.items():
            assert torch.allclose(tensor, reference[key], atol=5e-4), (name, key)
        assert _metrics(tmp_path, name)["eval_after"]["utterances"] == 2


def test_sigkill_then_resume_reaches_the_same_weights(real_manifest: Path, tmp_path: Path):
    extra = ["training.max_steps=4", "training.batch_size=2", "training.save_every_steps=1"]
    _run(_args(real_manifest, tmp_path, "straight", *extra))

    args = _args(real_manifest, tmp_path, "killed", *extra)
    cmd = [sys.executable, "-m", "kidwhisper", *args]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = tmp_path / "checkpoints" / "killed" / "step_0000002"
    deadline = time.time() + 600
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-epoch: 8 clips are 4 batches, killed after 2
    proc.wait()
    assert target.exists(), "the run never reached its second checkpoint"
    assert not (tmp_path / "checkpoints" / "killed" / "final").exists()

    _run(args)  # the same command continues from the latest checkpoint

    straight, resumed = _metrics(tmp_path, "straight"), _metrics(tmp_path, "killed")
    assert resumed["finished"] and resumed["steps"] == 4
    assert [p["loss"] for p in resumed["loss_curve"]] == [p["loss"] for p in straight["loss_curve"]]
    assert resumed["eval_after"]["wer"] == straight["eval_after"]["wer"]
    reference = _weights(tmp_path, "straight")
    for key, tensor in _weights(tmp_path, "killed").items():
        assert torch.equal(tensor, reference[key]), key
