"""`kidwhisper run-submission`: run a submission.zip as the competition runtime would.

    <workdir>/src/         the zip, unpacked (a member whose path escapes it is refused)
    <workdir>/data/        utterance_metadata.jsonl, submission_format.jsonl, audio/ (symlinks)
    <workdir>/submission/  where main.py writes submission.jsonl
    <workdir>/log.txt      everything main.py printed

`python src/main.py` runs from <workdir> in a sanitised environment (no PYTHONPATH, the Hub
offline) and, where the OS allows it, without a network (`unshare -rn`). The result is then
checked line by line against submission_format.jsonl. `runtime_layout` turns a manifest with
references (the competition's training schema) into that layout, so a run can also be scored.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from kidwhisper.inference.scoring import percent
from kidwhisper.submission.common import (
    FORMAT,
    METADATA,
    OFFLINE_ENV,
    SUBMISSION,
    SubmissionError,
    unsafe_member,
)

RUNTIME_LOG_LINES = 500  # the runtime keeps no more of the log
MAX_REASONS = 10
KEPT_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


# --- unpacking ---------------------------------------------------------------------------


def extract_zip(zip_path: str | Path, target: Path) -> list[str]:
    """Unpack `zip_path` into `target`, refusing the whole archive if any member escapes."""
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise SubmissionError(f"{zip_path}: not a readable zip file ({err})") from err
    with archive:
        names = archive.namelist()
        bad = [f"{name!r} ({why})" for name in names if (why := unsafe_member(name))]
        bad += [
            f"{name!r} (resolves outside the target)"
            for name in names
            if not unsafe_member(name) and not (root / name).resolve().is_relative_to(root)
        ]
        if bad:
            raise SubmissionError(f"{zip_path}: refused, member(s) escape the folder: {bad}")
        if "main.py" not in names:
            raise SubmissionError(f"{zip_path}: no main.py at the root of the zip")
        archive.extractall(target)
    return names


# --- data layout -------------------------------------------------------------------------


def _clean_relative(path: str) -> bool:
    return not unsafe_member(path) and not Path(path).is_absolute()


def runtime_layout(manifest: str | Path, out_dir: str | Path) -> Path:
    """Lay a competition-schema manifest out as the runtime's `data/` folder:
    utterance_metadata.jsonl (every field but the text), submission_format.jsonl (empty
    texts, manifest order) and the audio, symlinked at the same relative paths."""
    from kidwhisper.data.dataset import read_manifest

    manifest, out_dir = Path(manifest), Path(out_dir)
    read_manifest(manifest, require_text=False)  # fails on a bad line, naming it
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: not empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    with (
        open(manifest, encoding="utf-8") as lines,
        open(out_dir / METADATA, "w", encoding="utf-8") as metadata,
        open(out_dir / FORMAT, "w", encoding="utf-8") as submission_format,
    ):
        for line in lines:
            if not line.strip():
                continue
            row = json.loads(line)
            uid, audio = row["utterance_id"], row["audio_path"]
            relative = audio if _clean_relative(audio) else f"audio/{uid}{Path(audio).suffix}"
            link = out_dir / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to((manifest.parent / audio).resolve())
            meta = {k: (relative if k == "audio_path" else v) for k, v in row.items()}
            meta.pop("orthographic_text", None)
            metadata.write(json.dumps(meta, ensure_ascii=False) + "\n")
            empty = {"utterance_id": uid, "orthographic_text": ""}
            submission_format.write(json.dumps(empty) + "\n")
    return out_dir


def _runtime_folder(data: Path) -> Path:
    for folder in (data, data / "data"):
        if (folder / FORMAT).is_file() and (folder / METADATA).is_file():
            return folder
    raise SubmissionError(
        f"{data}: neither a runtime data folder ({METADATA}, {FORMAT}, audio/) nor a manifest"
    )


def _link_folder(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for entry in source.iterdir():
        (target / entry.name).symlink_to(entry.resolve())


# --- validation --------------------------------------------------------------------------


def _format_ids(submission_format: Path) -> list[str]:
    ids = []
    with open(submission_format, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    ids.append(json.loads(line)["utterance_id"])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    where = f"{submission_format}:{number}"
                    raise SubmissionError(f"{where}: unusable ({err!r})") from err
    return ids


def validate_submission(
    submission: Path, submission_format: Path
) -> tuple[list[str], dict[str, str]]:
    """Problems with `submission` (empty if valid), and its texts by id. Valid: one JSON
    object per line with exactly `utterance_id` and a string `orthographic_text`, the ids
    of `submission_format` in its order."""
    expected = _format_ids(submission_format)
    if not submission.is_file():
        return [f"{SUBMISSION} was not written"], {}
    problems: list[str] = []
    texts: dict[str, str] = {}
    lines = submission.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        where = f"{SUBMISSION} line {number}"
        want = expected[number - 1] if number <= len(expected) else None
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{where}: not valid JSON ({err.msg})")
            continue
        if not isinstance(row, dict) or set(row) != {"utterance_id", "orthographic_text"}:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            problems.append(f"{where}: expected utterance_id and orthographic_text, got {keys}")
            continue
        uid, text = row["utterance_id"], row["orthographic_text"]
        if want is not None and uid != want:
            problems.append(f"{where}: utterance_id {uid!r}, {FORMAT} has {want!r} there")
        if not isinstance(text, str):
            problems.append(f"{where}: orthographic_text of {uid!r} is not a string: {text!r}")
        elif isinstance(uid, str):
            texts[uid] = text
    if len(lines) != len(expected):
        problems.append(f"{SUBMISSION} has {len(lines)} lines, {FORMAT} has {len(expected)}")
    if len(problems) > MAX_REASONS:
        problems = [*problems[:MAX_REASONS], f"... and {len(problems) - MAX_REASONS} more"]
    return problems, texts


# --- running -----------------------------------------------------------------------------


@functools.cache
def network_isolation() -> list[str]:
    """`unshare -rn` (a user namespace without network) if this machine allows it, else []."""
    try:
        done = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return ["unshare", "-rn"] if done.returncode == 0 else []


def runtime_env(workdir: Path) -> dict[str, str]:
    """A minimal environment: no PYTHONPATH or virtualenv variables, the Hub offline."""
    env = {name: os.environ[name] for name in KEPT_ENV if name in os.environ}
    env.update(OFFLINE_ENV)
    env.update(
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
        HF_HOME=str(workdir / ".cache" / "huggingface"),  # the runtime has no Hub cache
    )
    return env


@dataclass
class SubmissionReport:
    valid: bool
    reasons: list[str]
    utterances: int  # lines submission_format.jsonl asks for
    empty: int  # of which got an empty transcript
    log_lines: int
    seconds: float  # wall time of `python src/main.py`
    returncode: int | None
    network: str
    workdir: Path
    log: Path
    submission: Path
    wer: float | None = None
    wer_by_age: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        lines = ["valid submission" if self.valid else "INVALID submission"]
        lines += [f"  {reason}" for reason in self.reasons]
        lines += [
            f"utterances: {self.utterances} ({self.empty} empty transcripts)",
            f"log lines: {self.log_lines} (the runtime keeps {RUNTIME_LOG_LINES}); {self.log}",
            f"wall time: {self.seconds:.1f} s (exit code {self.returncode})",
            f"network: {self.network}",
        ]
        if self.wer is not None:
            lines.append(f"WER {percent(self.wer)}")
            lines += [f"  age {age}: {percent(wer)}" for age, wer in self.wer_by_age.items()]
        lines += [f"warning: {warning}" for warning in self.warnings]
        if not self.valid and self.log_tail:
            lines += ["last lines of the log:", *(f"  | {line}" for line in self.log_tail)]
        return lines


def _references(manifest: Path):
    """The manifest's utterances if every one has a reference text, else None."""
    from kidwhisper.data.dataset import ManifestError, read_manifest

    try:
        return read_manifest(manifest, require_text=True)
    except ManifestError:
        return None


def run_submission(
    zip_path: str | Path,
    data: str | Path,
    workdir: str | Path | None = None,
    python: str | None = None,
    timeout: float | None = None,
) -> SubmissionReport:
    """Run `zip_path` on `data` (a runtime data folder, or a competition-schema manifest,
    laid out with `runtime_layout` and scored when it has references) as the runtime would."""
    zip_path, data = Path(zip_path), Path(data)
    if not zip_path.is_file():
        raise FileNotFoundError(f"{zip_path}: no such file")
    if not data.exists():
        raise FileNotFoundError(f"{data}: no such file or folder")
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="kidwhisper-submission-"))
    workdir = Path(workdir).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise FileExistsError(f"{workdir}: the work folder must be new or empty")
    workdir.mkdir(parents=True, exist_ok=True)

    extract_zip(zip_path, workdir / "src")
    references = None
    if data.is_file():
        runtime_layout(data, workdir / "data")
        references = _references(data)
    else:
        _link_folder(_runtime_folder(data), workdir / "data")
    (workdir / "submission").mkdir()

    isolation = network_isolation()
    network = (
        "off (unshare -rn)"
        if isolation
        else "NOT isolated (unshare -rn unavailable); HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1"
    )
    command = [*isolation, python or sys.executable, "src/main.py"]
    log_path = workdir / "log.txt"
    start = time.perf_counter()
    reasons: list[str] = []
    with open(log_path, "wb") as log:
        try:
            done = subprocess.run(
                command,
                cwd=workdir,
                env=runtime_env(workdir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
            returncode: int | None = done.returncode
        except subprocess.TimeoutExpired:
            returncode = None
            reasons.append(f"main.py ran past the {timeout:.0f} s limit and was stopped")
    seconds = time.perf_counter() - start
    if returncode:
        reasons.append(f"main.py exited with code {returncode}")

    log_text = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    submission = workdir / SUBMISSION
    problems, texts = validate_submission(submission, workdir / "data" / FORMAT)
    reasons += problems
    expected = _format_ids(workdir / "data" / FORMAT)
    report = SubmissionReport(
        valid=not reasons,
        reasons=reasons,
        utterances=len(expected),
        empty=sum(1 for uid in expected if not texts.get(uid)),
        log_lines=len(log_text),
        seconds=seconds,
        returncode=returncode,
        network=network,
        workdir=workdir,
        log=log_path,
        submission=submission,
        log_tail=log_text[-15:],
    )
    if len(log_text) > RUNTIME_LOG_LINES:
        report.warnings.append(
            f"the log has {len(log_text)} lines; the runtime keeps only {RUNTIME_LOG_LINES}"
        )
    if report.valid and references is not None:
        _score(report, references, texts)
    return report


def _score(report: SubmissionReport, references, texts: dict[str, str]) -> None:
    """The competition WER of the submission, overall and per age bucket."""
    from kidwhisper.inference.scoring import score

    overall, by_age = score(
        [u.text for u in references],
        [texts.get(u.utterance_id, "") for u in references],
        groups=[u.age_bucket or "unknown" for u in references],
    )
    report.wer = overall.wer
    report.wer_by_age = {age: r.wer for age, r in by_age.items()}
