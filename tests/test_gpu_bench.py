"""The GPU benchmark's CPU dry run: the script the GPU machines run still works."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"


def test_gpu_bench_dry_run_measures_every_column(capsys):
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--dry-run"])
    assert [r["variant"] for r in rows] == ["tiny"]
    row = rows[0]
    assert row["samples_per_s"] > 0 and row["tokens_per_s"] > 0 and row["tflops"] > 0
    assert row["decode_clips_per_s"] > 0
    assert row["competition_minutes"] == 214_000 / row["decode_clips_per_s"] / 60
    assert "| tiny |" in capsys.readouterr().out
