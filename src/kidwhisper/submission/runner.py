"""`kidwhisper run-submission`: run a submission.zip as the competition runtime would.

    <workdir>/src/         the zip, unpacked after its sizes and names are checked (unpack.py)
    <workdir>/data/        read-only COPIES of utterance_metadata.jsonl,
                           submission_format.jsonl and audio/ (nothing links to the user's files)
    <workdir>/submission/  where main.py writes submission.jsonl
    <workdir>/home/, tmp/  main.py's HOME (with its caches) and TMPDIR
    <workdir>/log.txt      everything main.py printed

`python src/main.py` runs from <workdir> confined by sandbox.py: in bubblewrap where it
works (the work folder its only writable place, no network), else without a network
(`unshare -n`), else only with `--allow-network`; its whole process group is killed when it
ends or runs past `--timeout`. The result is then checked line by line against the ids of
submission_format.jsonl, read before main.py ran. `runtime_layout` turns a manifest with
references (the competition's training schema) into that layout, so a run can also be scored.
"""

from __future__ import annotations

import collections
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kidwhisper.inference.scoring import percent
from kidwhisper.submission.common import (
    FORMAT,
    METADATA,
    SUBMISSION,
    SubmissionError,
    plain_name,
)
from kidwhisper.submission.sandbox import Isolation, choose_isolation, run_confined
from kidwhisper.submission.unpack import extract_zip

RUNTIME_LOG_LINES = 500  # the runtime keeps no more of the log
MAX_REASONS = 10
LOG_TAIL = 15  # lines of the log shown with an invalid submission
# 214,000 test clips of about 60 bytes a line make 13 MB; a larger file is not a submission
# and is not read into memory.
MAX_SUBMISSION_BYTES = 256 * 2**20
READ_ONLY = 0o444


# --- data layout -------------------------------------------------------------------------


def _read_only_copy(source: str | Path, target: str | Path) -> None:
    """A copy of the bytes (never a link back to the user's file), read-only."""
    shutil.copyfile(source, target)
    Path(target).chmod(READ_ONLY)


def _unsafe_ids(manifest: Path) -> list[str]:
    """`file:line: ...` for each utterance id that is not a plain file name."""
    problems = []
    with open(manifest, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                uid = json.loads(line)["utterance_id"]
                if not plain_name(uid):
                    problems.append(f"{manifest}:{number}: utterance_id {uid!r}")
    return problems


def runtime_layout(manifest: str | Path, out_dir: str | Path) -> Path:
    """Lay a competition-schema manifest out as the runtime's `data/` folder:
    utterance_metadata.jsonl (every field but the text), submission_format.jsonl (empty
    texts, manifest order) and read-only copies of the audio as audio/<id><suffix>. Ids
    that are not plain file names are refused, each with its line."""
    from kidwhisper.data.dataset import read_manifest

    manifest, out_dir = Path(manifest), Path(out_dir)
    read_manifest(manifest, require_text=False)  # fails on a bad line, naming it
    if bad := _unsafe_ids(manifest):
        more = f" (and {len(bad) - MAX_REASONS} more)" if len(bad) > MAX_REASONS else ""
        raise SubmissionError(
            f"{'; '.join(bad[:MAX_REASONS])}{more}: utterance ids must be plain file names "
            "(letters, digits, '._-', not starting with a dot); rename them in the manifest"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: not empty")
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    with (
        open(manifest, encoding="utf-8") as lines,
        open(out_dir / METADATA, "w", encoding="utf-8") as metadata,
        open(out_dir / FORMAT, "w", encoding="utf-8") as submission_format,
    ):
        for line in lines:
            if not line.strip():
                continue
            row = json.loads(line)
            uid, audio = row["utterance_id"], Path(row["audio_path"])
            suffix = audio.suffix if plain_name(audio.suffix[1:]) else ""
            relative = f"audio/{uid}{suffix}"
            if not (out_dir / relative).exists():
                _read_only_copy(manifest.parent / audio, out_dir / relative)
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


def _copy_folder(source: Path, target: Path) -> None:
    """A read-only copy of a runtime data folder (links in it are followed: bytes copied)."""
    shutil.copytree(source, target, copy_function=_read_only_copy)


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


def _not_a_submission(submission: Path) -> str | None:
    """Why `submission` cannot be read as one: absent, not a plain file, far too large."""
    if submission.is_symlink() or submission.parent.is_symlink():
        return f"{SUBMISSION} is a symbolic link, not a file main.py wrote"
    if not submission.exists():
        return f"{SUBMISSION} was not written"
    if not submission.is_file():
        return f"{SUBMISSION} is not a regular file"
    if submission.stat().st_size > MAX_SUBMISSION_BYTES:
        return f"{SUBMISSION} is over {MAX_SUBMISSION_BYTES // 2**20} MiB"
    return None


def _check_line(where: str, line: str, want: str | None, texts: dict[str, str]) -> list[str]:
    """Problems with one line of the submission; its text goes into `texts`."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return [f"{where}: not valid JSON ({err.msg})"]
    if not isinstance(row, dict) or set(row) != {"utterance_id", "orthographic_text"}:
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        return [f"{where}: expected utterance_id and orthographic_text, got {keys}"]
    problems = []
    uid, text = row["utterance_id"], row["orthographic_text"]
    if want is not None and uid != want:
        problems.append(f"{where}: utterance_id {uid!r}, {FORMAT} has {want!r} there")
    if not isinstance(text, str):
        problems.append(f"{where}: orthographic_text of {uid!r} is not a string: {text!r}")
    elif isinstance(uid, str):
        texts[uid] = text
    return problems


def validate_submission(
    submission: Path, submission_format: Path, expected: list[str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """Problems with `submission` (empty if valid), and its texts by id. Valid: one JSON
    object per line with exactly `utterance_id` and a string `orthographic_text`, the ids
    of `submission_format` (or `expected`, read before main.py could touch it) in order."""
    if expected is None:
        expected = _format_ids(submission_format)
    if why := _not_a_submission(submission):
        return [why], {}
    problems: list[str] = []
    texts: dict[str, str] = {}
    lines = submission.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        want = expected[number - 1] if number <= len(expected) else None
        problems += _check_line(f"{SUBMISSION} line {number}", line, want, texts)
    if len(lines) != len(expected):
        problems.append(f"{SUBMISSION} has {len(lines)} lines, {FORMAT} has {len(expected)}")
    if len(problems) > MAX_REASONS:
        problems = [*problems[:MAX_REASONS], f"... and {len(problems) - MAX_REASONS} more"]
    return problems, texts


# --- running -----------------------------------------------------------------------------


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
    texts: dict[str, str] = field(default_factory=dict, repr=False)  # by utterance id

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


def _work_folder(workdir: str | Path | None) -> Path:
    """The new or empty folder to run in (a new temporary one when unset)."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="kidwhisper-submission-")).resolve()
    workdir = Path(workdir).resolve()
    if workdir.exists() and not workdir.is_dir():
        raise SubmissionError(f"--workdir {workdir}: a file, not a folder; give a new folder")
    if workdir.exists() and any(workdir.iterdir()):
        raise FileExistsError(f"--workdir {workdir}: must be new or empty")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _lay_out_data(data: Path, target: Path) -> list | None:
    """Read-only copies of the runtime data in `target`; the references when `data` is a
    manifest that has them (then the run is scored)."""
    if data.is_file():
        runtime_layout(data, target)
        for name in (METADATA, FORMAT):
            (target / name).chmod(READ_ONLY)
        return _references(data)
    _copy_folder(_runtime_folder(data), target)
    return None


@dataclass
class _Run:
    returncode: int | None
    seconds: float
    log_lines: int
    log_tail: list[str]


def _run_main(workdir: Path, python: str | None, timeout: float | None, isolation) -> _Run:
    """`python src/main.py` from `workdir`, confined; its output into log.txt."""
    command = [python or sys.executable, "src/main.py"]
    start = time.perf_counter()
    with open(workdir / "log.txt", "w+b") as log:
        returncode = run_confined(command, workdir, log, isolation, timeout)
        seconds = time.perf_counter() - start
        log.seek(0)  # read through this handle: main.py may have replaced the file itself
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        count = 0
        for line in log:
            count += 1
            tail.append(line.decode("utf-8", errors="replace").rstrip("\n"))
    return _Run(returncode, seconds, count, list(tail))


def run_submission(
    zip_path: str | Path,
    data: str | Path,
    workdir: str | Path | None = None,
    python: str | None = None,
    timeout: float | None = None,
    allow_network: bool = False,
) -> SubmissionReport:
    """Run `zip_path` on `data` (a runtime data folder, or a competition-schema manifest,
    laid out with `runtime_layout` and scored when it has references) as the runtime would,
    confined as sandbox.py describes (refused without a network cut unless `allow_network`)."""
    zip_path, data = Path(zip_path), Path(data)
    if not zip_path.is_file():
        raise FileNotFoundError(f"{zip_path}: no such file")
    if not data.exists():
        raise FileNotFoundError(f"{data}: no such file or folder")
    isolation = choose_isolation(allow_network)
    workdir = _work_folder(workdir)
    extract_zip(zip_path, workdir / "src")
    references = _lay_out_data(data, workdir / "data")
    expected = _format_ids(workdir / "data" / FORMAT)  # before main.py can touch it
    (workdir / "submission").mkdir()
    run = _run_main(workdir, python, timeout, isolation)
    report = _report(workdir, run, expected, isolation, timeout)
    if report.valid and references is not None:
        _score(report, references, report.texts)
    return report


def _report(
    workdir: Path, run: _Run, expected: list[str], isolation: Isolation, timeout: float | None
) -> SubmissionReport:
    reasons = []
    if run.returncode is None:
        reasons.append(f"main.py ran past the {timeout:.0f} s limit and was stopped")
    elif run.returncode:
        reasons.append(f"main.py exited with code {run.returncode}")
    submission = workdir / SUBMISSION
    problems, texts = validate_submission(submission, workdir / "data" / FORMAT, expected)
    report = SubmissionReport(
        valid=not reasons + problems,
        reasons=reasons + problems,
        utterances=len(expected),
        empty=sum(1 for uid in expected if not texts.get(uid)),
        log_lines=run.log_lines,
        seconds=run.seconds,
        returncode=run.returncode,
        network=isolation.network,
        workdir=workdir,
        log=workdir / "log.txt",
        submission=submission,
        log_tail=run.log_tail,
        texts=texts,
    )
    if run.log_lines > RUNTIME_LOG_LINES:
        report.warnings.append(
            f"the log has {run.log_lines} lines; the runtime keeps only {RUNTIME_LOG_LINES}"
        )
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
