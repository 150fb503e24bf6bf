"""The seed's experiment workflow: sequential folders, main.py, report, archive."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kidwhisper.cli.main import main
from kidwhisper.config import load_config
from kidwhisper.training.workflow import (
    collect_results,
    new_experiment,
    results_table,
    update_readme,
)

from .conftest import REPO


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "experiments" / "templates").mkdir(parents=True)
    template = REPO / "experiments/templates/config_template.yaml"
    (tmp_path / "experiments/templates/config_template.yaml").write_text(template.read_text())
    return tmp_path / "experiments"


def test_folders_are_numbered_in_sequence(root: Path):
    first = new_experiment("baseline", root)
    second = new_experiment("experiment", root, source="baseline_001")
    third = new_experiment("experiment", root, source=str(REPO / "configs/quickstart.yaml"))
    assert [p.name for p in (first, second, third)] == [
        "baseline_001",
        "experiment_002",
        "experiment_003",
    ]
    assert load_config(first / "config.yaml", check_paths=False).model.variant == "small"
    assert load_config(third / "config.yaml").model.variant == "tiny.en"
    assert load_config(third / "config.yaml").output.name == "experiment_003"
    assert "run_folder(__file__)" in (third / "main.py").read_text()


def test_report_rewrites_only_the_results_block(root: Path, tmp_path: Path):
    folder = new_experiment("baseline", root)
    metrics = {
        "variant": "small",
        "steps": 10,
        "eval_before": {"wer": 0.5, "audio_context": "full"},
        "eval_after": {"wer": 0.25, "wer_by_age": {"5-7": 0.3, "8-11": 0.2}},
        "best_wer": 0.25,
        "wall_seconds": 120,
        "finished": True,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    table = results_table(collect_results(root))
    assert (
        "| baseline_001 | small | 10 | 50.00% | 25.00% | 25.00% | 5-7: 30.00%, 8-11: 20.00% |"
        in table
    )
    # A run from before the window was recorded, whose config used short input: its
    # "before" figure was measured outside the starting model's window, so it is left out.
    metrics["eval_before"] = {"wer": 0.9}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace("model:", "model:\n  audio_context: batch", 1))
    assert "| baseline_001 | small | 10 | n/a | 25.00% |" in results_table(collect_results(root))
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n")
    update_readme(readme, table)
    update_readme(readme, table)  # idempotent: one block, intro kept
    text = readme.read_text()
    assert text.count("<!-- results:start -->") == 1 and text.startswith("# Title\n\nintro\n")


def test_archive_moves_checkpoints_with_logs(tmp_path: Path, capsys):
    run = tmp_path / "checkpoints" / "baseline_001"
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "events.out").write_text("log")
    assert main(["archive", "baseline_001", "--checkpoints", str(tmp_path / "checkpoints")]) == 0
    archived = tmp_path / "checkpoints" / "archived" / "baseline_001" / "tensorboard" / "events.out"
    assert archived.read_text() == "log" and not run.exists()
    assert main(["archive", "baseline_001", "--checkpoints", str(tmp_path / "checkpoints")]) == 2


@pytest.mark.integration
def test_experiment_main_runs_as_a_module(tmp_path: Path, real_manifest: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(["new-experiment", "baseline", "--from", str(REPO / "configs/quickstart.yaml")]) == 0
    )
    overrides = [
        f"data.train={real_manifest}",
        f"data.eval={real_manifest}",
        "data.max_train_samples=2",
        "data.max_eval_samples=2",
        "data.num_workers=0",
        "training.batch_size=2",
        "training.max_steps=1",
        "evaluation.max_new_tokens=8",
        f"output.checkpoints_dir={tmp_path / 'checkpoints'}",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "experiments.baseline_001.main", *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "experiments" / "baseline_001"
    assert json.loads((folder / "metrics.json").read_text())["finished"]
    assert (folder / "results.md").is_file()
    assert main(["report", "--readme", str(tmp_path / "README.md")]) == 0
    assert "| baseline_001 | tiny.en | 1 |" in (tmp_path / "README.md").read_text()
