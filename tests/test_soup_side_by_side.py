"""training.soup_jobs: a soup's runs trained side by side, each in a process of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kidwhisper.training import checkpoint as ckpt
from kidwhisper.training.experiments import run_experiment
from kidwhisper.training.faults import TrainingError
from kidwhisper.training.side_by_side import Job, run_side_by_side, thread_shares

from .conftest import REPO
from .test_soup import _overrides
from .test_soup_recipes import MEMBERS
from .test_soup_recipes import _config as recipes_config


@pytest.fixture
def one_thread():
    """Both ways of running a soup with one thread a run, as two jobs on a 2-thread
    process give each: then they compute the same operations in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_side_by_side_trains_the_same_runs_as_one_after_another(tmp_path, one_thread):
    runs = {}
    for jobs in (1, 2):
        config = recipes_config(tmp_path / f"jobs{jobs}", f"training.soup_jobs={jobs}")
        runs[jobs] = run_experiment(config)
    assert [m["changes"] for m in runs[2]["soup"]["members"]] == [
        m["changes"] for m in runs[1]["soup"]["members"]
    ]
    for name in ("soup-member0", "soup-member1", "soup"):
        one, two = (load_file(tmp_path / f"jobs{j}" / "ckpt" / name / "final" / "model.safetensors")
                    for j in (1, 2))  # fmt: skip
        assert one.keys() == two.keys()
        for key in one:  # float32 rounding only
            torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)
    assert runs[2]["eval_after"]["wer"] == pytest.approx(runs[1]["eval_after"]["wer"])
    assert runs[2]["steps"] == runs[1]["steps"] == 4  # two runs of two steps


def _record(path: str, seconds: float) -> None:
    """A job that notes its threads and when it ran."""
    start = time.time()
    time.sleep(seconds)
    Path(path).write_text(f"{torch.get_num_threads()} {start} {time.time()}")


def test_a_last_partial_round_waits_for_the_full_rounds_and_takes_every_thread(tmp_path):
    assert thread_shares(7, 2, 2) == [(1, False)] * 6 + [(2, True)]
    assert thread_shares(4, 2, 2) == [(1, False)] * 4
    assert thread_shares(5, 3, 6) == [(2, False)] * 3 + [(3, True)] * 2
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        jobs = [Job(f"job{i}", tmp_path / f"ckpt{i}", (str(tmp_path / f"job{i}"), seconds))
                for i, seconds in enumerate((0.5, 2.0, 0.1))]  # fmt: skip
        run_side_by_side(_record, jobs, 2)
    finally:
        torch.set_num_threads(before)
    runs = [[float(x) for x in (tmp_path / f"job{i}").read_text().split()] for i in range(3)]
    assert [threads for threads, _, _ in runs] == [1, 1, 2]
    assert runs[2][1] >= runs[1][2]  # the third started once the longer second had ended


def test_a_member_that_fails_stops_the_others_and_is_named(tmp_path):
    bad = MEMBERS[:-1] + ", {augment.noise.p: 0.5, augment.noise.folder: no-such-folder}]"
    config = recipes_config(tmp_path, f"training.soup_members={bad}", "training.soup_jobs=3",
                            "training.max_steps=400")  # fmt: skip
    with pytest.raises(TrainingError, match=r"soup member soup-member2 failed \(exit 2;") as err:
        run_experiment(config)
    assert "Fix it and run the same command again" in str(err.value)
    assert "soup-member0 (" in str(err.value) and "soup-member1 (" in str(err.value)
    for name in ("soup-member0", "soup-member1"):  # stopped, not finished
        assert not (tmp_path / "ckpt" / name / "final").exists()


def _member_losses(log: Path) -> list[int]:
    lines = log.read_text().splitlines()
    return [sum(f"[soup-seed{s}]" in ln and " loss " in ln for ln in lines) for s in (3, 4)]


def test_a_signal_to_the_group_stops_every_member_at_a_checkpoint_and_they_resume(tmp_path):
    """As Slurm and `pkill -f` do: the members hear it once, through the soup's process."""
    overrides = [*_overrides(tmp_path), "training.soup_jobs=2", "training.log_every_steps=1"]
    overrides.append("data.num_workers=1")  # a worker each, which must not outlive its run
    command = [sys.executable, "-m", "kidwhisper", "train", str(REPO / "configs/quickstart.yaml")]
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([*command, *overrides, "training.max_steps=400"],
                                stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and min(_member_losses(log)) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    err = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "run the same command again to resume" in err
    stopped = {}
    for seed in (3, 4):
        latest = ckpt.latest_checkpoint(tmp_path / "ckpt" / f"soup-seed{seed}")
        stopped[seed] = int(ckpt.load_trainer_state(latest)["state"]["step"])
        assert 2 <= stopped[seed] < 400
        assert f"soup-seed{seed} (step {stopped[seed]}, {latest})" in err

    target = max(stopped.values()) + 2
    done = subprocess.run([*command, *overrides, f"training.max_steps={target}"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("resumed from") == 2
    for seed in (3, 4):
        assert (tmp_path / "ckpt" / f"soup-seed{seed}" / "final" / "model.safetensors").exists()
    assert (tmp_path / "ckpt" / "soup" / "final" / "model.safetensors").exists()
