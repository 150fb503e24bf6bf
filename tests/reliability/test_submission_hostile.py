"""Foreign submissions: each test plants a hostile zip (or data) and checks what survives.

Most main.py files here are a few lines of Python, no model: the sandbox, not decoding, is
under test. Tests that need bubblewrap skip, saying why, where `bwrap` cannot run.
"""

from __future__ import annotations

import importlib.util
import json
import stat
import sys
import time
import zipfile
from pathlib import Path

import pytest

from kidwhisper.cli.main import main as cli
from kidwhisper.submission import sandbox
from kidwhisper.submission.common import SubmissionError
from kidwhisper.submission.runner import run_submission
from kidwhisper.submission.unpack import (
    MAX_ENTRIES,
    MAX_RATIO,
    MAX_TOTAL_BYTES,
    _size_problems,
    check_archive,
    extract_zip,
)

from ..conftest import QUICKSTART, REPO

needs_bwrap = pytest.mark.skipif(
    sandbox.detect_isolation().kind != "bwrap",
    reason="bubblewrap (bwrap) missing or unusable here: apt-get install bubblewrap",
)
needs_isolation = pytest.mark.skipif(
    sandbox.detect_isolation().kind == "none", reason="neither bwrap nor unshare -n works here"
)

# Writes a valid submission: the ids of submission_format.jsonl, empty texts.
VALID = """
import json, pathlib
ids = [json.loads(l)["utterance_id"] for l in open("data/submission_format.jsonl") if l.strip()]
pathlib.Path("submission").mkdir(exist_ok=True)
with open("submission/submission.jsonl", "w") as out:
    for uid in ids:
        out.write(json.dumps({"utterance_id": uid, "orthographic_text": ""}) + "\\n")
"""


def _load_bench():
    spec = importlib.util.spec_from_file_location(
        "unpack_check", REPO / "benchmarks" / "unpack_check.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["unpack_check"] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def _zip(path: Path, members: dict[str, str | bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def _main_zip(tmp_path: Path, code: str) -> Path:
    return _zip(tmp_path / "submission.zip", {"main.py": code})


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """The user's runtime data folder: two ids, their (fake) audio."""
    folder = tmp_path / "user_data"
    (folder / "audio").mkdir(parents=True)
    ids = ["U_a", "U_b"]
    metadata = [{"utterance_id": u, "audio_path": f"audio/{u}.flac"} for u in ids]
    fmt = [{"utterance_id": u, "orthographic_text": ""} for u in ids]
    (folder / "utterance_metadata.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in metadata)
    )
    (folder / "submission_format.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fmt))
    for uid in ids:
        (folder / "audio" / f"{uid}.flac").write_bytes(b"fLaC not really " + uid.encode())
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _run(tmp_path: Path, code: str, data: Path, **kwargs):
    zip_path = _main_zip(tmp_path, code)
    return run_submission(zip_path, data, workdir=tmp_path / "run", **kwargs)


def _probe(report) -> dict:
    return json.loads((report.workdir / "probe.json").read_text())


# --- before unpacking --------------------------------------------------------------------


def test_a_2_gib_zip_bomb_is_refused_before_anything_is_written(tmp_path, data):
    bomb = bench.zeros_bomb(tmp_path / "bomb.zip")
    with zipfile.ZipFile(bomb) as archive:  # a real bomb: 2 GiB of zeros, valid deflate
        info = archive.getinfo("zeros.bin")
        assert info.file_size == 2**31 and info.file_size / info.compress_size > MAX_RATIO
        with archive.open(info) as member:
            assert member.read(2**20) == bytes(2**20)
    with pytest.raises(SubmissionError, match=r"'zeros\.bin' unpacks [\d,]+ times larger"):
        run_submission(bomb, data, workdir=tmp_path / "run")
    assert list((tmp_path / "run").rglob("*")) == []  # not even src/


def test_too_many_entries_are_refused(tmp_path):
    names = {"main.py": "", **{f"f{n}": "" for n in range(MAX_ENTRIES)}}
    crowded = _zip(tmp_path / "crowded.zip", names)
    with pytest.raises(SubmissionError, match=rf"{MAX_ENTRIES + 1:,} entries"):
        extract_zip(crowded, tmp_path / "src")
    assert not (tmp_path / "src").exists()


def test_ratio_applies_to_large_members_only(tmp_path):
    ok = _zip(tmp_path / "ok.zip", {"main.py": "", "small_zeros": bytes(2**19)})
    assert extract_zip(ok, tmp_path / "ok") == ["main.py", "small_zeros"]
    dense = _zip(tmp_path / "dense.zip", {"main.py": "", "zeros": bytes(3 * 2**20)})
    with pytest.raises(SubmissionError, match=r"'zeros' unpacks [\d,]+ times larger"):
        extract_zip(dense, tmp_path / "dense")
    assert not (tmp_path / "dense").exists()


def _info(name: str, size: int, stored: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.file_size, info.compress_size = size, stored
    return info


def test_a_whisper_large_v3_submission_passes_and_oversized_ones_do_not(tmp_path):
    # float16 weights of large-v3 deflate about 1.1:1; stored, 1:1.
    real = [_info("model/model.safetensors", 3_087_394_360, 2_806_722_145), _info("main.py", 9, 9)]
    assert _size_problems(real, free=10 * 2**30) == []
    assert "only" in _size_problems(real, free=2**30)[0]  # not enough disk
    huge = [_info("w.bin", MAX_TOTAL_BYTES + 1, MAX_TOTAL_BYTES + 1)]
    assert "at most" in _size_problems(huge, free=2**50)[0]
    sparse = bench.submission_zip(tmp_path / "large.zip")  # 3.09 GB declared, holes on disk
    with zipfile.ZipFile(sparse) as archive:
        assert len(check_archive(archive, tmp_path / "src", "large.zip")) == 32


@pytest.mark.parametrize("declared", [1000, 3 * 2**20], ids=["smaller", "larger"])
def test_a_header_that_lies_about_the_size_is_caught_while_unpacking(tmp_path, declared):
    path = tmp_path / "liar.zip"
    payload = bytes(range(256)) * 8192  # 2 MiB that barely compress
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("main.py", "")
        archive.writestr("model.bin", payload)
        archive.getinfo("model.bin").file_size = declared  # the central directory lies
    with pytest.raises(SubmissionError, match=r"refused while unpacking"):
        extract_zip(path, tmp_path / "src")
    assert not (tmp_path / "src").exists()  # nothing of it stays


@pytest.mark.parametrize(
    "name, why",
    [
        ("../escaped.txt", "'..' in its path"),
        ("/tmp/escaped.txt", "absolute path"),
        ("model/../../escaped.txt", "'..' in its path"),
    ],
)
def test_paths_that_escape_are_refused(tmp_path, data, name, why):
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    bad = _zip(tmp_path / "bad.zip", {"main.py": VALID, name: "pwned"})
    with pytest.raises(SubmissionError, match=why):
        run_submission(bad, data, workdir=tmp_path / "run")
    assert keep.read_text() == "mine" and not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "run" / "src").exists()


def test_a_symlink_member_is_refused(tmp_path):
    path = tmp_path / "link.zip"
    link = zipfile.ZipInfo("model")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("main.py", "")
        archive.writestr(link, "/etc")
    with pytest.raises(SubmissionError, match="symbolic link"):
        extract_zip(path, tmp_path / "src")


@pytest.mark.parametrize(
    "members",
    [{"model": "a file", "model/config.json": "{}"}, {"model/": "", "model": "a file"}],
    ids=["file-then-folder", "folder-then-file"],
)
def test_a_file_and_a_folder_of_one_name_is_one_line(tmp_path, data, capsys, members):
    clash = _zip(tmp_path / "clash.zip", {"main.py": VALID, **members})
    argv = ["run-submission", str(clash), str(data), "--workdir", str(tmp_path / "run")]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "a file and a folder of that name" in err and len(err.strip().splitlines()) == 1


def test_a_workdir_that_is_a_file_is_one_line(tmp_path, data, capsys):
    workdir = tmp_path / "notes.txt"
    workdir.write_text("mine")
    argv = ["run-submission", str(_main_zip(tmp_path, VALID)), str(data), "--workdir", str(workdir)]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "a file, not a folder" in err and len(err.splitlines()) == 1
    assert workdir.read_text() == "mine"


# --- while main.py runs ------------------------------------------------------------------


@needs_bwrap
def test_main_py_cannot_write_outside_the_work_folder(tmp_path, data):
    outside = tmp_path / "outside.txt"
    code = f"""
try:
    open({str(outside)!r}, "w").write("pwned")
    print("WROTE OUTSIDE")
except OSError as err:
    print("refused:", err)
print([line for line in open("/proc/self/status") if line.startswith("CapEff")])
{VALID}"""
    report = _run(tmp_path, code, data)
    assert report.valid, report.summary_lines()
    assert not outside.exists()
    log = report.log.read_text()
    assert "refused: [Errno 30] Read-only file system" in log
    assert "CapEff:\\t0000000000000000" in log  # no capabilities, even as root


def test_home_tmp_and_caches_are_inside_the_work_folder(tmp_path, data):
    code = f"""
import json, os, tempfile
names = ["HOME", "TMPDIR", "XDG_CACHE_HOME", "HF_HOME", "TORCH_HOME"]
seen = {{n: os.environ.get(n) for n in names}}
seen["home"] = os.path.expanduser("~")
seen["tempfile"] = tempfile.gettempdir()
json.dump(seen, open("probe.json", "w"))
{VALID}"""
    report = _run(tmp_path, code, data)
    assert report.valid, report.summary_lines()
    for name, path in _probe(report).items():
        assert path and Path(path).is_relative_to(report.workdir), (name, path)
        assert Path(path).is_dir(), name


def test_main_py_cannot_change_the_users_metadata_or_audio(tmp_path, data):
    before = _snapshot(data)
    code = f"""
import json, os
seen = {{}}
for name in ["data/utterance_metadata.jsonl", "data/audio/U_a.flac"]:
    seen[name] = [os.path.islink(name), oct(os.stat(name).st_mode & 0o777)]
    try:
        open(name, "ab").write(b"appended")
    except OSError as err:
        seen[name].append(str(err))
json.dump(seen, open("probe.json", "w"))
{VALID}"""
    report = _run(tmp_path, code, data)
    assert report.valid, report.summary_lines()
    assert _snapshot(data) == before  # the user's files, byte for byte
    for name, (link, mode, *refused) in _probe(report).items():
        assert not link and mode == "0o444", name  # read-only copies, no links back
        if sandbox.detect_isolation().kind == "bwrap":  # root too: no capabilities there
            assert "Permission denied" in refused[0], name


def test_validation_uses_the_ids_read_before_main_py_ran(tmp_path, data):
    code = """
import json, os
fmt = "data/submission_format.jsonl"
os.chmod(fmt, 0o644)  # its own copy: it may, but it gains nothing
open(fmt, "w").write(json.dumps({"utterance_id": "U_fake", "orthographic_text": ""}) + "\\n")
os.makedirs("submission", exist_ok=True)
open("submission/submission.jsonl", "w").write(open(fmt).read())
"""
    report = _run(tmp_path, code, data)
    assert not report.valid
    assert "utterance_id 'U_fake', submission_format.jsonl has 'U_a' there" in report.reasons[0]


def test_an_id_that_is_not_a_file_name_is_refused_with_its_line(tmp_path):
    rows = [json.loads(line) for line in (QUICKSTART / "dev.jsonl").read_text().splitlines()[:3]]
    for row in rows:
        row["audio_path"] = str((QUICKSTART / row["audio_path"]).resolve())
    rows[1]["utterance_id"] = "../../../x"
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(SubmissionError, match=rf"{manifest}:2: utterance_id '\.\./\.\./\.\./x'"):
        run_submission(_main_zip(tmp_path, VALID), manifest, workdir=tmp_path / "a" / "b" / "run")
    assert not list(tmp_path.rglob("x*"))  # no x.flac anywhere above the work folder


GRANDCHILD = """
import subprocess, sys, time
late = {late!r}
subprocess.Popen(
    [sys.executable, "-c", f"import time; time.sleep(2); open({{late!r}}, 'w').write('late')"],
    start_new_session={escape},
)
open("spawned", "w").close()
{then}
"""


@pytest.mark.parametrize(
    "then, escape",
    [
        ("time.sleep(60)", False),  # main.py runs past --timeout
        ("", False),  # main.py ends at once, its child runs on
        pytest.param("time.sleep(60)", True, marks=needs_bwrap),  # the child leaves the group
    ],
    ids=["timeout", "exits", "setsid"],
)
def test_no_grandchild_outlives_the_run(tmp_path, data, then, escape):
    late = tmp_path / "run" / "late.txt"  # inside the work folder: writable even in bwrap
    code = GRANDCHILD.format(late=str(late), escape=escape, then=then)
    report = _run(tmp_path, code, data, timeout=1)
    if then:
        assert report.returncode is None and "ran past the 1 s limit" in report.reasons[0]
    assert (report.workdir / "spawned").exists()  # the grandchild was started
    time.sleep(3)  # it would have written after 2 s
    assert not late.exists()


@needs_isolation
def test_the_network_is_cut(tmp_path, data):
    code = f"""
import json, socket
json.dump([name for _, name in socket.if_nameindex()], open("probe.json", "w"))
{VALID}"""
    report = _run(tmp_path, code, data)
    assert _probe(report) == ["lo"]  # a network namespace of its own: loopback only
    assert report.network.startswith("off")


@pytest.fixture
def no_isolation(monkeypatch):
    """A machine where neither bwrap nor unshare can run."""
    monkeypatch.setattr(sandbox, "_works", lambda command: False)
    sandbox.detect_isolation.cache_clear()
    yield
    sandbox.detect_isolation.cache_clear()


def test_without_isolation_the_run_is_refused_unless_allowed(tmp_path, data, no_isolation, capsys):
    zip_path = _main_zip(tmp_path, VALID)
    argv = ["run-submission", str(zip_path), str(data), "--workdir", str(tmp_path / "run")]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "apt-get install bubblewrap" in err and "--allow-network" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()
    assert cli([*argv, "--allow-network"]) == 0
    assert "network: ON: NOT isolated" in capsys.readouterr().out


# --- the shipped main.py -----------------------------------------------------------------


@pytest.mark.integration
def test_shipped_main_skips_non_string_ids(tmp_path):
    from kidwhisper.submission.package import package_submission

    zip_path = tmp_path / "submission.zip"
    package_submission("bundled:tiny.en", zip_path, batch_size=2)
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    rows = [json.loads(line) for line in (QUICKSTART / "dev.jsonl").read_text().splitlines()[:2]]
    metadata, fmt = [], []
    for row in rows:
        uid = row["utterance_id"]
        (data / "audio" / f"{uid}.flac").write_bytes((QUICKSTART / row["audio_path"]).read_bytes())
        metadata.append({"utterance_id": uid, "audio_path": f"audio/{uid}.flac"})
        fmt.append({"utterance_id": uid, "orthographic_text": ""})
    metadata += [{"utterance_id": [1, 2], "audio_path": "audio/x.flac"}, {"utterance_id": 7}]
    (data / "utterance_metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metadata))
    (data / "submission_format.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fmt))
    report = run_submission(zip_path, data, workdir=tmp_path / "run")
    assert report.valid, report.summary_lines()
    assert report.empty == 0  # both real clips transcribed
    log = report.log.read_text()
    assert "utterance_id [1, 2] is not a string; line skipped" in log
    assert "2 line(s) skipped: utterance_id missing or not a string" in log
