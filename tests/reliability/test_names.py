"""Names and deletions: nothing the user did not name is deleted or moved.

Each test plants a careless or hostile name (`output.name=..`, a config called `..yaml`,
`archive ../x`, `export-ct2 --force` on a folder of notes) beside files that must survive,
runs the command as a user would, and checks the refusal and the survivors.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kidwhisper.cli.main import main
from kidwhisper.config import load_config
from kidwhisper.files import UnsafePathError, check_plain_name, remove_owned
from kidwhisper.training.experiments import Experiment

from ..conftest import REPO

QUICKSTART_YAML = REPO / "configs" / "quickstart.yaml"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def planted(tmp_path: Path, monkeypatch) -> dict[str, Path]:
    """A working folder with checkpoints/ (another run in it), experiments/ and a sibling
    file beside them: what a wrong name could reach."""
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "checkpoints" / "other_run"
    (other / "step_0000001").mkdir(parents=True)
    (other / "latest").write_text("step_0000001\n")
    (tmp_path / "experiments").mkdir()
    sibling = tmp_path / "sibling.txt"
    sibling.write_text("the user's own file\n")
    return {"root": tmp_path, "other": other, "sibling": sibling}


def _survived(planted: dict[str, Path]) -> None:
    assert planted["sibling"].read_text() == "the user's own file\n"
    assert (planted["other"] / "latest").is_file() and (planted["other"] / "step_0000001").is_dir()


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", ".hidden", "x" * 300])
def test_train_overwrite_with_a_bad_output_name_deletes_nothing(planted, capsys, name):
    args = ["train", str(QUICKSTART_YAML), f"output.name={name}", "--overwrite"]
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert "output.name" in err and "plain name" in err
    _survived(planted)


def test_a_config_named_dotdot_yaml_is_refused(planted, capsys):
    config = planted["root"] / "..yaml"
    shutil.copy(QUICKSTART_YAML, config)
    assert main(["train", str(config), "--overwrite"]) == 2
    err = _one_line_error(capsys)
    assert "..yaml" in err and "output.name" in err
    _survived(planted)


def test_overwrite_removes_only_a_run_folder_it_wrote(planted):
    """`--overwrite` of a run whose folder holds something else (the user's notes) stops;
    of a real run folder, removes that folder only."""
    overrides = ["output.checkpoints_dir=checkpoints", "output.experiments_dir=experiments"]
    foreign = planted["root"] / "checkpoints" / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a run")
    experiment = Experiment(load_config(QUICKSTART_YAML, [*overrides, "output.name=mine"]))
    with pytest.raises(UnsafePathError, match="does not look like a run folder"):
        experiment.create(overwrite=True)
    assert (foreign / "notes.txt").is_file()

    (foreign / "notes.txt").unlink()
    (foreign / "step_0000002").mkdir()
    (foreign / "latest").write_text("step_0000002\n")
    experiment.write_metrics({"finished": True})
    experiment.create(overwrite=True)
    assert not foreign.exists()
    # Its figures go too: a replacement that dies must not pass for the finished run.
    assert not experiment.finished() and (experiment.dir / "config.yaml").is_file()
    _survived(planted)


def test_archive_takes_only_a_run_under_checkpoints(planted, capsys):
    outside = planted["root"] / "x"
    (outside / "step_0000001").mkdir(parents=True)  # looks like a run, but is not ours
    checkpoints = str(planted["root"] / "checkpoints")
    assert main(["archive", "../x", "--checkpoints", checkpoints]) == 2
    assert "plain name" in _one_line_error(capsys)
    assert (outside / "step_0000001").is_dir()

    notes = planted["root"] / "checkpoints" / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep")
    assert main(["archive", "notes", "--checkpoints", checkpoints]) == 2
    assert "not a run folder" in _one_line_error(capsys)
    assert (notes / "todo.txt").is_file()

    assert main(["archive", "other_run", "--checkpoints", checkpoints]) == 0
    assert (planted["root"] / "checkpoints" / "archived" / "other_run" / "latest").is_file()
    assert planted["sibling"].is_file()


def test_export_ct2_force_does_not_replace_a_foreign_folder(planted, capsys):
    foreign = planted["root"] / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8 not a model")
    assert main(["export-ct2", "bundled:tiny.en", str(foreign), "--force"]) == 2
    assert "does not look like a model folder" in _one_line_error(capsys)
    assert (foreign / "holiday.jpg").read_bytes() == b"\xff\xd8 not a model"
    assert main(["export-ct2", "bundled:tiny.en", str(planted["sibling"]), "--force"]) == 2
    _one_line_error(capsys)
    _survived(planted)


def test_new_experiment_name_is_a_plain_name(planted, capsys):
    assert main(["new-experiment", "../escape", "--root", "experiments"]) == 2
    assert "plain name" in _one_line_error(capsys)
    assert not (planted["root"] / "escape_001").exists()


@pytest.mark.parametrize(
    ("name", "plain"),
    [("baseline_001", True), ("run-2.b", True), ("..", False), (".x", False),
     ("a/b", False), ("a\\b", False), ("", False), ("café", False), ("a b", False)],
)  # fmt: skip
def test_check_plain_name(name, plain):
    if plain:
        assert check_plain_name(name, "key") == name
    else:
        with pytest.raises(UnsafePathError, match=r"key: .* not a plain name"):
            check_plain_name(name, "key")


def test_remove_owned_stays_inside_its_folder(tmp_path: Path):
    owner, outside = tmp_path / "owner", tmp_path / "outside"
    (owner / "run").mkdir(parents=True)
    outside.mkdir()
    (outside / "data.txt").write_text("keep")
    with pytest.raises(UnsafePathError, match="not inside"):
        remove_owned(owner / ".." / "outside", owner)
    with pytest.raises(UnsafePathError, match="not inside"):
        remove_owned(owner, owner)  # the owner itself is not strictly inside
    link = owner / "link"
    link.symlink_to(outside, target_is_directory=True)
    remove_owned(link, owner, lambda p: True)  # the link goes, never what it points to
    assert not link.exists() and (outside / "data.txt").read_text() == "keep"
    remove_owned(owner / "run", owner, lambda p: False)  # empty: nothing to lose
    assert not (owner / "run").exists()
