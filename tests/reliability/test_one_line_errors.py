"""One line for every user error: exit 2, the file/key/line named, what to do; no traceback.

Each case is run through the command line as a user would type it (in-process, and one in
a real subprocess), with stderr checked to be a single `error:` line.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from kidwhisper.cli.main import main
from kidwhisper.models.bundled import ct2_files

from ..conftest import QUICKSTART, REPO

QUICKSTART_YAML = REPO / "configs" / "quickstart.yaml"


def _one_line(capsys, args: list[str]) -> str:
    assert main(args) == 2, args
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("training.lr=[1,", "training.lr: not a plain YAML value (line 1, column 4"),
        ('training.lr=!!python/object/apply:os.system ["touch pwned"]', "python/object/apply"),
        ("training.lr={a: 1", "training.lr: not a plain YAML value"),
    ],
)
def test_yaml_error_in_an_override(capsys, tmp_path, monkeypatch, override, says):
    monkeypatch.chdir(tmp_path)
    err = _one_line(capsys, ["estimate", str(QUICKSTART_YAML), override])
    assert override in err and says in err and "quote it" in err
    assert not (tmp_path / "pwned").exists()


def test_a_config_file_that_is_not_utf8(capsys, tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes(b"training:\n  lr: 1.0e-5  # caf\xe9\n")
    err = _one_line(capsys, ["estimate", str(config)])
    assert f"{config}: line 2: not UTF-8" in err and "save the file as UTF-8" in err


def test_a_python_tag_in_a_config_file(capsys, tmp_path):
    config = tmp_path / "tag.yaml"
    config.write_text('training: !!python/object/apply:os.system ["true"]\n')
    err = _one_line(capsys, ["estimate", str(config)])
    assert f"{config}: not valid YAML: line 1" in err


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_corrupt_ctranslate2_model_bin(capsys, tmp_path, damage):
    meta, [model_bin] = ct2_files("tiny.en")
    folder = tmp_path / "ct2"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((meta / name).read_bytes())
    with open(model_bin, "rb") as whole:
        head = whole.read(1_000_000)
    data = {"truncated": head, "garbage": bytes(range(256)) * 16, "empty": b""}[damage]
    (folder / "model.bin").write_bytes(data)
    err = _one_line(capsys, ["import-ct2", str(folder), str(tmp_path / "out")])
    assert f"{folder / 'model.bin'}: not a readable CTranslate2 Whisper model.bin" in err
    assert "download" in err and not (tmp_path / "out").exists()


def test_a_mistyped_model_path_suggests_the_close_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints" / "quickstart" / "final").mkdir(parents=True)
    data = str(QUICKSTART / "dev.jsonl")
    err = _one_line(capsys, ["evaluate", "checkpoints/quickstrat/final", "--data", data])
    assert "checkpoints/quickstrat/final: no such model folder" in err
    assert "did you mean checkpoints/quickstart/final?" in err
    err = _one_line(capsys, ["transcribe", "tiny.en", data, "--out", "t.txt"])
    assert "did you mean bundled:tiny.en?" in err
    err = _one_line(capsys, ["evaluate", "bundled:tiny.e", "--data", data])
    assert "no bundled model 'tiny.e' (did you mean bundled:tiny.en?)" in err


def test_a_non_string_age_bucket(capsys, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"utterance_id": "a", "audio_path": "a.flac", "age_bucket": 7, '
        '"orthographic_text": "hi"}\n'
    )
    assert main(["evaluate", "bundled:tiny.en", "--data", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert f"{manifest}:1: age_bucket must be a string, got int 7" in err and "Traceback" not in err


def test_one_line_from_a_real_process(tmp_path):
    """The installed entry point, not only main(): stderr is the one line, exit 2."""
    done = subprocess.run(
        [sys.executable, "-m", "kidwhisper", "estimate", str(QUICKSTART_YAML), "training.lr=[1,"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: override")
