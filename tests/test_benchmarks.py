"""Benchmarks run end to end on a few real clips (the figures themselves are not checked)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from .conftest import REPO, needs_shared


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
@pytest.mark.slow
@needs_shared
def test_train_throughput_prints_both_sides(tmp_path: Path, capsys):
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
    bench = _load("train_throughput")
    dry_run = ["--limit", "16", "--eval-limit", "8", "--epochs", "1"]
    figures = bench.main(
        [*dry_run, "--out-dir", str(tmp_path), "--json", str(tmp_path / "figures.json")]
    )
    table = capsys.readouterr().out
    rows = {
        cells[0]: cells
        for line in table.splitlines()
        if line.startswith("| ") and (cells := [c.strip() for c in line.strip("|").split("|")])
    }
    for side in ("plain", "kidwhisper"):
        assert side in rows, f"no {side} row in:\n{table}"
        _, epochs, steps, seconds, throughput, speedup, wer = rows[side]
        assert epochs == "1" and int(steps) >= 1 and float(seconds) > 0
        assert float(throughput) > 0 and speedup.endswith("x")
        assert re.fullmatch(r"\d+\.\d\d%", wer)
    assert "Step counts differ" in table
    saved = json.loads((tmp_path / "figures.json").read_text())
    assert (
        [r["side"] for r in saved["rows"]]
        == ["plain", "kidwhisper"]
        == [r["side"] for r in figures["rows"]]
    )
    assert saved["rows"][1]["speedup"] > 0 and saved["rows"][0]["speedup"] == 1.0


@pytest.mark.integration
@pytest.mark.slow
@needs_shared
def test_decode_throughput_prints_every_system(tmp_path: Path, capsys):
    pytest.importorskip("faster_whisper", reason="the faster-whisper rows need it")
    bench = _load("decode_throughput")
    systems = bench.SYSTEMS + bench.PADDED
    rows = bench.main(
        ["--limit", "3", "--systems", *systems, "--json", str(tmp_path / "figures.json")]
    )
    table = capsys.readouterr().out
    assert [r["system"] for r in rows] == systems
    assert all(r["seconds"] > 0 and 0 <= r["wer"] <= 1 for r in rows)
    for system in systems:
        assert f"| {system} |" in table
    # The same weights given the same features: the float32 export decodes as transformers.
    wer = {r["system"]: r["wer"] for r in rows}
    assert wer["faster-whisper-float32-pad30"] == wer["transformers"]
    assert json.loads((tmp_path / "figures.json").read_text()) == rows


@pytest.mark.integration
@pytest.mark.slow
def test_augment_cost_prints_every_augmentation(tmp_path: Path, capsys):
    bench = _load("augment_cost")
    rows = bench.main(["--batch", "2", "--repeats", "1", "--json", str(tmp_path / "rows.json")])
    table = capsys.readouterr().out
    names = ["load + log-mel (no augmentation)", *bench.STREAMS, "all together"]
    assert [r["row"] for r in rows] == names
    assert all(r["cpu_ms"] > 0 and r["wall_ms"] > 0 for r in rows)
    assert rows[0]["extra_cpu_ms"] == 0
    for name in names:
        assert re.search(rf"\| {re.escape(name)} \| \d+\.\d \| [+-]\d+\.\d \| \d+\.\d \|", table), (
            table
        )
    assert json.loads((tmp_path / "rows.json").read_text()) == rows


def test_step_cost_prints_every_row_and_frozen_rows_keep_their_blocks(tmp_path: Path, capsys):
    bench = _load("step_cost")
    argv = ["--variant", "tiny", "--frozen", "0,2", "--steps", "1", "--warmup", "1", "--bf16"]
    rows = bench.main([*argv, "--batch", "2", "--json", str(tmp_path / "rows.json")])
    names = ["everything trains", "stem frozen", "stem + 2 blocks frozen",
             "everything trains, bf16 autocast"]  # fmt: skip
    assert [r["row"] for r in rows] == names
    assert all(r["cpu_s"] > 0 and r["wall_s"] > 0 for r in rows) and rows[0]["speedup"] == 1
    table = capsys.readouterr().out
    for name in names:
        assert re.search(rf"\| {re.escape(name)} \| \d+\.\d \| \d+\.\d \| \d\.\d\dx \|", table)
    assert json.loads((tmp_path / "rows.json").read_text()) == rows
    assert re.search(r"native bf16: (yes|no)", table)
    # The rows time what they say: that row's model freezes blocks 0 and 1, not block 2.
    trained = bench.build_rows("tiny", [2], False)["stem + 2 blocks frozen"][0]
    frozen = [n for n, p in trained.named_parameters() if not p.requires_grad]
    assert any(n.startswith("model.encoder.layers.1.") for n in frozen)
    assert not any(n.startswith("model.encoder.layers.2.") for n in frozen)


def test_unpack_check_passes_large_v3_and_refuses_the_bomb(capsys):
    rows = _load("unpack_check").main(["--repeats", "1"])
    assert [row["verdict"] for row in rows] == ["passes", "passes", "refused"]
    assert all(row["declared_gb"] > 2 and row["on_disk_mb"] < 50 for row in rows)  # sparse
    assert "| open + check |" in capsys.readouterr().out


def test_accuracy_table_says_when_a_folds_time_is_only_its_resumed_part():
    bench = _load("accuracy")
    fold = {"wer": 0.2, "wer_by_age": {"5-7": 0.3}, "wall_seconds": 100.0}
    whole = bench.row("plain base", [fold, {**fold, "wer": 0.1}], 1)
    part = bench.row("plain base", [fold, {**fold, "resumed": True}], 1)
    assert (whole["resumed_folds"], part["resumed_folds"]) == (0, 1)
    assert "| 200 |" in bench.markdown([whole])
    assert "| 200 (1 of 2 folds resumed: their last part only) |" in bench.markdown([part])


@pytest.mark.integration
@pytest.mark.slow  # --quick: about 2 min of CPU (2 folds x plain + a soup of 4, one step each)
@needs_shared
def test_accuracy_quick_prints_plain_and_kidwhisper_on_the_same_folds(tmp_path: Path, capsys):
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
    bench = _load("accuracy")
    args = ["--quick", "--out-dir", str(tmp_path), "--json", str(tmp_path / "a.json")]
    figures = bench.main(args)
    table = capsys.readouterr().out
    sides = [r["side"] for r in figures["rows"]]
    assert sides == [  # the recommended config is a soup of 4 runs: one soup a fold
        "plain tiny.en",
        "kidwhisper kids_recommended.yaml, one run (mean of its runs)",
        "kidwhisper kids_recommended.yaml: the soup of its 4 runs",
    ]
    for side in sides:
        assert f"| {side} |" in table
    one_run, soup = figures["rows"][1:]
    assert soup["runs"] == 4 and soup["overall"]["n"] == 2  # seeds per fold, folds
    assert one_run["seed_spread"] == soup["seed_spread"]  # the same runs: the soup's
    assert len(list((tmp_path / "experiments").glob("*-cv-fold2-member*"))) == 4
    assert all(r["wall_seconds"] > 0 and r["overall"]["mean"] >= 0 for r in figures["rows"])
    assert "kidwhisper - plain, per fold (2 folds):" in table
    assert json.loads((tmp_path / "a.json").read_text())["rows"][0]["side"] == sides[0]
    assert {f["best"] for f in figures["plain_epochs"].values()} == {1}  # scored per epoch
    # Both sides were scored on the same held-out speakers of each fold.
    assert (tmp_path / "folds" / "fold_2" / "heldout.jsonl").is_file()
    # A second run on the same --out-dir trains nothing: every fold is read back.
    for trained in tmp_path.glob("plain-fold*"):
        shutil.rmtree(trained)
    again = bench.main(args)
    assert again["rows"] == figures["rows"] and not list(tmp_path.glob("plain-fold*"))
    with pytest.raises(SystemExit, match=r"plain-fold1\.json: made with"):
        bench.main([*args, "--plain-lr", "1e-4"])  # other settings: refused, not mixed


@pytest.mark.integration
@needs_shared
def test_beam_search_prints_greedy_and_beams(tmp_path: Path, capsys):
    bench = _load("beam_search")
    rows = bench.main(["--limit", "3", "--beams", "1", "2", "--json", str(tmp_path / "b.json")])
    table = capsys.readouterr().out
    assert [r["beam"] for r in rows] == [1, 2]
    assert rows[0]["vs_greedy"] == 1.0 and rows[0]["changed"] == 0
    assert all(r["seconds"] > 0 and 0 <= r["wer"] <= 1 and 0 <= r["changed"] <= 3 for r in rows)
    assert re.search(r"\| bundled:tiny\.en \| full \| 2 \| \d+\.\d\d% \|", table), table
    assert json.loads((tmp_path / "b.json").read_text()) == {"rows": rows}
