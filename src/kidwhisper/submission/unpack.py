"""Unpacking a foreign submission.zip without trusting it.

Everything the zip's central directory declares is checked before a byte is written: the
number of entries, the total unpacked size (against a cap and the free disk), the
compression ratio of each large member, and every name (no absolute path, no `..`, no
symlink, no file and folder of the same name, no repeated name, `main.py` at the root). The
members are then written one by one, counting the bytes actually produced, so a header that
lies about a member's size is caught as soon as the data outgrows it. On any refusal the
target folder (which this module creates) is removed again.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
import zlib
from pathlib import Path

from kidwhisper.submission.common import SubmissionError, unsafe_member

# A real submission holds main.py, about 20 shipped modules, a model folder of ten files or
# a sharded checkpoint of a few hundred: 10,000 is far above it and far below what makes
# creating the entries alone a denial of service.
MAX_ENTRIES = 10_000
# whisper-large-v3 in float32 is about 6.2 GB; 16 GiB leaves room for that and an adapter,
# while a zip declaring terabytes is refused before it fills the disk.
MAX_TOTAL_BYTES = 16 * 2**30
# Float weights compress about 1.1:1 and text about 3-10:1; a member of zeros deflates about
# 1000:1. 100:1 separates the two with a wide margin on both sides.
MAX_RATIO = 100
# Small members may compress as they like (a 1 MiB file cannot fill a disk whatever its ratio;
# the tokenizer's JSON compresses well).
RATIO_FLOOR_BYTES = 2**20
CHUNK = 2**20
MAX_NAMED = 5  # problems named one by one in the refusal; the rest are counted


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _name_problems(infos: list[zipfile.ZipInfo], root: str) -> list[str]:
    """Why each bad member name is refused (string operations: measured, pathlib made the
    check of a 231-entry zip 5 times slower)."""
    problems = []
    files, folders = set(), set()
    for info in infos:
        name = info.filename
        if why := unsafe_member(name):
            problems.append(f"{name!r} ({why})")
        elif not os.path.normpath(os.path.join(root, name)).startswith(root + os.sep):
            problems.append(f"{name!r} (resolves outside the target)")
        elif _is_symlink(info):
            problems.append(f"{name!r} (a symbolic link)")
        path = name.rstrip("/")
        if path in files or (not info.is_dir() and path in folders):
            problems.append(f"{name!r} (a repeated name, or a file and a folder of that name)")
        (folders if info.is_dir() else files).add(path)
        parts = path.split("/")
        folders.update("/".join(parts[:end]) for end in range(1, len(parts)))
    problems += [f"{name!r} (a file and a folder of that name)" for name in files & folders]
    return problems


def _size_problems(infos: list[zipfile.ZipInfo], free: int) -> list[str]:
    """Why the declared sizes are refused: too many entries, too much data, a bomb."""
    problems = []
    if len(infos) > MAX_ENTRIES:
        problems.append(f"{len(infos):,} entries (at most {MAX_ENTRIES:,})")
    total = sum(info.file_size for info in infos)
    if total > MAX_TOTAL_BYTES:
        problems.append(f"{total:,} bytes unpacked (at most {MAX_TOTAL_BYTES:,})")
    elif total > free:
        problems.append(f"{total:,} bytes unpacked, but only {free:,} free on the disk")
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > MAX_RATIO:
            problems.append(
                f"{info.filename!r} unpacks {ratio:,.0f} times larger than it is stored "
                f"(at most {MAX_RATIO}:1 for members over {RATIO_FLOOR_BYTES // 2**20} MiB)"
            )
    return problems


def _free_bytes(target: Path) -> int:
    folder = target
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_archive(archive: zipfile.ZipFile, target: Path, label: str) -> list[zipfile.ZipInfo]:
    """The members of `archive` if it may be unpacked into `target`, else a SubmissionError
    naming what is wrong. Reads only the central directory."""
    infos = archive.infolist()
    problems = _size_problems(infos, _free_bytes(target))
    problems += _name_problems(infos, os.path.normpath(target.absolute()))
    if problems:
        named = problems[:MAX_NAMED]
        more = f"; and {len(problems) - MAX_NAMED} more" if len(problems) > MAX_NAMED else ""
        raise SubmissionError(f"{label}: refused, {'; '.join(named)}{more}")
    if "main.py" not in archive.NameToInfo:
        raise SubmissionError(f"{label}: no main.py at the root of the zip")
    return infos


def _write_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    """Unpack one member, stopping as soon as it produces more bytes than it declared."""
    written = 0
    with archive.open(info) as source, open(path, "xb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > info.file_size:
                break
            out.write(chunk)
    if written != info.file_size:
        raise SubmissionError(
            f"{info.filename!r} declares {info.file_size:,} bytes but holds "
            f"{'more' if written > info.file_size else f'{written:,}'}: a lying header"
        )


def _remove_unpacked(target: Path, created: bool) -> None:
    """Undo a refused unpacking: `target` held nothing before it, so all it holds now
    came from the zip; the folder itself goes only if this module made it."""
    if created:
        shutil.rmtree(target, ignore_errors=True)
        return
    for child in target.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def extract_zip(zip_path: str | Path, target: Path) -> list[str]:
    """Unpack `zip_path` into the new or empty folder `target` after `check_archive`; on
    any refusal, `target` is left absent (nothing of the zip stays on disk)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SubmissionError(f"{target}: must be a new or empty folder to unpack into")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise SubmissionError(f"{zip_path}: not a readable zip file ({err})") from err
    with archive:
        infos = check_archive(archive, target, str(zip_path))
        created = not target.exists()
        target.mkdir(parents=True, exist_ok=True)
        try:
            for info in infos:
                path = target / info.filename
                if info.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                _write_member(archive, info, path)
        except (SubmissionError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as err:
            _remove_unpacked(target, created)
            raise SubmissionError(f"{zip_path}: refused while unpacking, {err}") from err
    return [info.filename for info in infos]
