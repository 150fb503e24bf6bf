"""Outputs: written beside and renamed into place, never onto an input, replaced only with --force.

A failure in the middle of a write (simulated by raising while the file or folder is being
written) must leave the previous output whole and no temporary file behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from kidwhisper.cli.main import main
from kidwhisper.files import (
    UnsafePathError,
    atomic_folder,
    atomic_open,
    atomic_write_text,
    looks_like_model,
    refuse_output_over_input,
)
from kidwhisper.inference.evaluation import save_predictions

from ..conftest import QUICKSTART


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_file_interrupted_mid_write_leaves_the_old_one(tmp_path: Path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old\n")
    with pytest.raises(OSError, match="disk full"), atomic_open(path) as out:
        out.write("new, half")
        raise OSError("disk full")
    assert path.read_text() == "old\n" and _only(tmp_path) == ["metrics.json"]


def test_predictions_interrupted_mid_write_leave_the_old_file(tmp_path: Path):
    path = tmp_path / "predictions.jsonl"
    good = {"utterance_id": "a", "prediction": "hi", "reference": "hi", "age_bucket": "5-7"}
    save_predictions(SimpleNamespace(predictions=[good]), path)
    before = path.read_text()
    broken = SimpleNamespace(predictions=[good, {"utterance_id": "b"}])  # fails on row 2
    with pytest.raises(KeyError):
        save_predictions(broken, path)
    assert path.read_text() == before and _only(tmp_path) == ["predictions.jsonl"]


def _model_folder(path: Path, marker: str = "old") -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_text(marker)
    return path


def test_a_folder_interrupted_mid_write_leaves_the_old_one(tmp_path: Path):
    target = _model_folder(tmp_path / "model")
    with pytest.raises(RuntimeError), atomic_folder(target, force=True) as tmp:
        (tmp / "model.safetensors").write_text("half")
        raise RuntimeError("killed")
    assert (target / "model.safetensors").read_text() == "old" and _only(tmp_path) == ["model"]
    with atomic_folder(target, force=True, looks_like=looks_like_model) as tmp:
        _model_folder(tmp / "x", "new")
        for item in (tmp / "x").iterdir():
            item.rename(tmp / item.name)
        (tmp / "x").rmdir()
    assert (target / "model.safetensors").read_text() == "new" and _only(tmp_path) == ["model"]


def test_replacing_a_folder_needs_force_and_a_folder_the_tool_wrote(tmp_path: Path):
    target = _model_folder(tmp_path / "model")
    with pytest.raises(UnsafePathError, match="--force"), atomic_folder(target):
        pass
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("keep")
    refused = pytest.raises(UnsafePathError, match="does not look like a model folder")
    with refused, atomic_folder(notes, force=True, looks_like=looks_like_model):
        pass
    assert (notes / "a.txt").read_text() == "keep"


@pytest.mark.parametrize(
    ("out", "inputs", "refused"),
    [("a", ["a"], True), ("a/b", ["a"], True), ("a", ["a/b"], True), ("c", ["a", "b"], False),
     ("ab", ["a"], False)],
)  # fmt: skip
def test_output_over_input(tmp_path: Path, out, inputs, refused):
    paths = [tmp_path / i for i in inputs]
    if refused:
        with pytest.raises(UnsafePathError, match="would write over the input"):
            refuse_output_over_input(tmp_path / out, paths)
    else:
        refuse_output_over_input(tmp_path / out, paths)


def test_commands_refuse_an_output_on_their_input(tmp_path: Path, capsys):
    """Each is refused before any model loads, and the input is unchanged."""
    manifest = tmp_path / "dev.jsonl"
    manifest.write_text((QUICKSTART / "dev.jsonl").read_text())
    text = manifest.read_text()
    source = _model_folder(tmp_path / "source")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    for args in (
        ["transcribe", "bundled:tiny.en", str(manifest), "--out", str(manifest)],
        ["evaluate", "bundled:tiny.en", "--data", str(manifest), "--out", str(manifest)],
        ["average", str(source), "--out", str(source / "sub")],
        ["average", str(source), "--out", str(source), "--force"],
        ["merge-lora", str(adapter), "--out", str(adapter)],
        ["merge-lora", str(adapter), "--out", str(tmp_path), "--force"],
    ):
        assert main(args) == 2, args
        assert "would write over the input" in _one_line_error(capsys)
    assert manifest.read_text() == text
    assert (source / "model.safetensors").read_text() == "old"
    assert (adapter / "adapter_config.json").is_file()


def test_model_outputs_need_force(tmp_path: Path, capsys):
    existing = _model_folder(tmp_path / "existing")
    source = _model_folder(tmp_path / "source")
    ct2 = tmp_path / "ct2"
    ct2.mkdir()
    for name in ("model.bin", "tokenizer.json", "config.json"):
        (ct2 / name).write_text("{}")
    for args in (
        ["average", str(source), "--out", str(existing)],
        ["import-ct2", str(ct2), str(existing)],
        ["export-ct2", str(source), str(existing)],
    ):
        assert main(args) == 2, args
        assert "--force" in _one_line_error(capsys)
    assert (existing / "model.safetensors").read_text() == "old"


def test_split_outputs_are_whole_files(tmp_path: Path):
    """split writes each output through a temporary name: no `.tmp-` file is left."""
    rows = [json.loads(line) for line in (QUICKSTART / "dev.jsonl").read_text().splitlines()]
    manifest = tmp_path / "all.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["split", str(manifest), "--out-dir", str(tmp_path / "out")]) == 0
    assert _only(tmp_path / "out") == ["dev.jsonl", "train.jsonl"]
