# ruff: noqa: E402  (the shipped kidwhisper must be first on sys.path before anything imports it)
"""Competition entry point: transcribe data/ into submission/submission.jsonl.

Shipped as `main.py` at the root of a submission.zip by `kidwhisper package-submission`.
The "On Top of Pasketti" runtime unzips the archive into `src/` and runs this file from a
folder holding `data/` (utterance_metadata.jsonl, submission_format.jsonl, audio/), with no
internet and without kidwhisper installed: the modules inference needs travel beside this
file in `kidwhisper/`, the model in `model/`, the batch size and decoding settings in
`kidwhisper_settings.json`.

Every id of submission_format.jsonl gets a line, in its order. A clip that cannot be read or
decoded gets "" (and a log line, up to a cap); an id without metadata gets "" (counted). The
log stays around 100 lines: the runtime keeps only 500.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()  # before the heavy imports: loading counts them
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the shipped kidwhisper, never an installed one
for _flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_flag, "1")  # no internet: never wait on the Hub (before transformers)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers

import kidwhisper
from kidwhisper.data.dataset import Utterance, clip_seconds
from kidwhisper.device import pick_device
from kidwhisper.inference.batching import by_length, transcribe
from kidwhisper.inference.decoding import DecodingOptions
from kidwhisper.models.factory import WhisperModel, load_model
from kidwhisper.submission.common import FORMAT, METADATA, MODEL_DIR, SETTINGS_FILE, SUBMISSION

TEST_CLIPS = 214_000  # the competition's test set, to be decoded in at most 2 hours
LOG_LINES = 90  # budget for ordinary log lines; the final summary always gets through
CLIP_WARNINGS = 20  # at most this many lines about single clips
PROGRESS_LINES = 20  # progress is logged about this many times, not per batch
CUDA_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

log = logging.getLogger("submission")


class LogBudget(logging.Filter):
    """Keeps the log short: at most `lines` records in all and `clip_warnings` about single
    clips; records logged with ``extra={"keep": True}`` always pass."""

    def __init__(self, lines: int = LOG_LINES, clip_warnings: int = CLIP_WARNINGS) -> None:
        super().__init__()
        self.lines, self.clip_warnings = lines, clip_warnings
        self.emitted = self.clips = self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "keep", False):
            return True
        about_clip = str(record.msg).startswith("cannot decode")
        if self.emitted >= self.lines or (about_clip and self.clips >= self.clip_warnings):
            self.suppressed += 1
            return False
        self.clips += about_clip
        self.emitted += 1
        return True


def setup_logging() -> LogBudget:
    budget = LogBudget()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(budget)
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(True)  # Python warnings go through the budget too
    transformers.logging.set_verbosity_error()
    return budget


def keep(message: str, *args: object) -> None:
    """A summary line that the log budget never drops."""
    log.info(message, *args, extra={"keep": True})


# --- inputs ------------------------------------------------------------------------------


def jsonl_rows(path: Path) -> list[tuple[int, object]]:
    """(line number, parsed row) for each non-blank line; a line that is not JSON is logged
    and left out."""
    rows = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                log.warning("%s:%d: not valid JSON (%s); line skipped", path.name, number, err.msg)
    return rows


def _string_id(path: Path, number: int, row: object) -> str | None:
    """The line's utterance_id if it is a string; else None, logged."""
    uid = row.get("utterance_id") if isinstance(row, dict) else None
    if not isinstance(uid, str):
        log.warning("%s:%d: utterance_id %r is not a string; line skipped", path.name, number, uid)
        return None
    return uid


def read_inputs(data: Path) -> tuple[list[str], list[Utterance], int, int]:
    """The ids to write (submission_format order), the utterances to decode, how many ids
    have no usable metadata line, and how many lines had no string utterance_id."""
    ids, skipped = [], 0
    for number, row in jsonl_rows(data / FORMAT):
        uid = _string_id(data / FORMAT, number, row)
        skipped += uid is None
        if uid is not None:
            ids.append(uid)
    wanted = set(ids)
    found: dict[str, Utterance] = {}
    for number, row in jsonl_rows(data / METADATA):
        uid = _string_id(data / METADATA, number, row)
        skipped += uid is None
        if uid is None or uid not in wanted:
            continue
        audio = row.get("audio_path")
        if not isinstance(audio, str) or uid in found:
            log.warning("utterance_metadata.jsonl:%d: no audio_path or a repeated id", number)
            continue
        duration = row.get("audio_duration_sec")
        found[uid] = Utterance(
            utterance_id=uid,
            audio=data / audio,
            text=None,
            duration=float(duration) if isinstance(duration, int | float) else None,
            age_bucket=age if isinstance(age := row.get("age_bucket"), str) else None,
        )
    return ids, list(found.values()), len(wanted - found.keys()), skipped


def read_settings() -> dict:
    path = HERE / SETTINGS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# --- model -------------------------------------------------------------------------------


def load(folder: Path, settings: dict) -> WhisperModel:
    """The shipped model, loaded by kidwhisper's own loader (as `evaluate` loads it), on the
    GPU in `cuda_dtype` when there is one, else on the CPU in float32."""
    wm = load_model(
        str(folder),
        settings.get("variant"),
        language=settings.get("language", "en"),
        task=settings.get("task", "transcribe"),
    )
    device = pick_device("auto")
    dtype = CUDA_DTYPES[settings.get("cuda_dtype", "float16")]
    if device.type != "cuda":
        log.warning("no GPU available: falling back to the CPU in float32 (much slower)")
        dtype = torch.float32
    wm.model.to(device=device, dtype=dtype).eval()
    return wm


# --- decoding ----------------------------------------------------------------------------


def decode(
    wm: WhisperModel,
    utterances: list[Utterance],
    batch_size: int,
    options: DecodingOptions,
    workers: int,
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Transcribe longest first, in chunks of whole batches so progress is logged about
    `PROGRESS_LINES` times (the batches are those one `transcribe` call would make)."""
    ordered = by_length(utterances)
    seconds = [clip_seconds(u) for u in ordered]
    total_audio = sum(seconds) or 1.0
    batches = math.ceil(len(ordered) / batch_size)
    chunk = batch_size * max(1, math.ceil(batches / PROGRESS_LINES))
    texts: dict[str, str] = {}
    errors: list[tuple[str, str]] = []
    start = time.perf_counter()
    for first in range(0, len(ordered), chunk):
        part = ordered[first : first + chunk]
        try:
            got, bad = transcribe(wm, part, batch_size, options, workers, progress=False)
        except Exception as err:  # a failure outside the per-clip retry: isolate the clip
            log.warning("a chunk of %d clips failed (%s); decoding them one by one", len(part), err)
            got, bad = one_by_one(wm, part, options)
        texts.update(got)
        errors += bad
        done = first + len(part)
        elapsed = time.perf_counter() - start
        audio_done = sum(seconds[:done]) or 1e-9
        log.info(
            "%d/%d clips, %.1f clips/s, %.0f s elapsed, about %.0f s left",
            done,
            len(ordered),
            done / elapsed,
            elapsed,
            elapsed * (total_audio - audio_done) / audio_done,
        )
    return texts, errors


def one_by_one(
    wm: WhisperModel, utterances: list[Utterance], options: DecodingOptions
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    texts: dict[str, str] = {}
    errors: list[tuple[str, str]] = []
    for utterance in utterances:
        try:
            got, bad = transcribe(wm, [utterance], 1, options, 0, progress=False)
        except Exception as err:
            log.warning("cannot decode %s: %s", utterance.utterance_id, err)
            got, bad = {}, [(utterance.utterance_id, str(err))]
        texts.update(got)
        errors += bad
    return texts, errors


def write_submission(path: Path, ids: list[str], texts: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as out:
        for uid in ids:
            row = {"utterance_id": uid, "orthographic_text": texts.get(uid, "")}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(partial, path)


# --- main --------------------------------------------------------------------------------


def main() -> int:
    started = STARTED
    budget = setup_logging()
    shipped = Path(kidwhisper.__file__).resolve().parent
    if shipped != HERE / "kidwhisper":
        raise RuntimeError(f"kidwhisper was imported from {shipped}, not from {HERE}")
    settings = read_settings()
    data = Path.cwd() / "data"
    if not (data / FORMAT).is_file():
        data = HERE.parent / "data"
    ids, utterances, missing, skipped = read_inputs(data)
    log.info(
        "%d ids to transcribe, %d with audio, %d without metadata",
        len(ids),
        len(utterances),
        missing,
    )
    wm = load(HERE / MODEL_DIR, settings)
    device = wm.model.device
    workers = settings.get("num_workers")
    if workers is None:  # audio reading in parallel only when a GPU does the decoding
        workers = min(4, max(0, (os.cpu_count() or 1) - 1)) if device.type == "cuda" else 0
    batch_size = int(settings.get("batch_size", 32))
    options = DecodingOptions(**settings.get("decoding", {}))
    loaded = time.perf_counter()
    log_setup(wm, settings, batch_size, workers, options, loaded - started)

    texts, errors = decode(wm, utterances, batch_size, options, workers)
    decoded = time.perf_counter()
    write_submission(Path.cwd() / SUBMISSION, ids, texts)
    empty = sum(1 for uid in ids if not texts.get(uid))
    keep("wrote %s: %d lines, %d empty", SUBMISSION, len(ids), empty)
    keep("%d clip(s) unreadable or undecodable, %d id(s) without metadata", len(errors), missing)
    if skipped:
        keep("%d line(s) skipped: utterance_id missing or not a string", skipped)
    if utterances:
        rate = len(utterances) / max(decoded - loaded, 1e-9)
        keep(
            "decoded %d clips in %.1f s: %.2f clips/s; %d clips would take about %.0f min "
            "(+ %.0f s loading)",
            len(utterances),
            decoded - loaded,
            rate,
            TEST_CLIPS,
            TEST_CLIPS / rate / 60,
            loaded - started,
        )
    if budget.suppressed:
        keep("%d log message(s) left out to keep the log short", budget.suppressed)
    keep("done in %.1f s", time.perf_counter() - started)
    return 0


def log_setup(
    wm: WhisperModel,
    settings: dict,
    batch_size: int,
    workers: int,
    options: DecodingOptions,
    load_seconds: float,
) -> None:
    """Two lines on what runs where: versions, device, model; context, batches, decoding."""
    device, dtype = wm.model.device, wm.model.dtype
    hardware = f"{torch.get_num_threads()} threads"
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name()
    log.info(
        "python %s, torch %s, transformers %s; %s %s (%s); model %s, %.1fM parameters",
        sys.version.split()[0],
        torch.__version__,
        transformers.__version__,
        device.type,
        str(dtype).removeprefix("torch."),
        hardware,
        settings.get("source", "?"),
        sum(p.numel() for p in wm.model.parameters()) / 1e6,
    )
    log.info(
        "audio context %s, batch size %d, %d loader workers, %s; loaded in %.1f s",
        wm.audio_context,
        batch_size,
        workers,
        options,
        load_seconds,
    )


if __name__ == "__main__":
    sys.exit(main())
