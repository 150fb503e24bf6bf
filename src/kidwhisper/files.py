"""Safe names, deletions and writes: nothing removed that the tool does not own, no half files.

A leaf module (it imports only errors.py, and schema.py's name rule); the submission does
not ship it, so the shipped modules do not import it. Every name the tool turns into a
folder (a run, an experiment, an archive) is a plain name; every folder it removes or
replaces lies strictly inside the folder it owns and looks like what it replaces; every
file or folder it writes is written under a temporary name beside the target and renamed
into place, so a crash or a full disk leaves the old output or none, never half of one;
and no output may land on one of the command's inputs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from kidwhisper.errors import UserError
from kidwhisper.schema import plain_name_problem

TMP_PREFIX = ".tmp-"


class UnsafePathError(UserError, ValueError):
    """A name or path that would write or delete outside what the tool owns."""


def check_plain_name(name: object, what: str) -> str:
    """`name` if it is a plain file name (letters, digits, `._-`, not starting with a dot),
    else a `UnsafePathError` naming `what` (the key or argument it came from)."""
    problem = plain_name_problem(name)
    if problem:
        raise UnsafePathError(f"{what}: {problem}")
    return name


def _location(path: Path) -> Path:
    """Where `path` itself lives: its parent resolved, its own name kept (a link stays a
    link, so removing it removes the link, never what it points to)."""
    path = Path(path).absolute()
    return path.parent.resolve() / path.name


def lies_inside(path: str | Path, folder: str | Path) -> bool:
    """True when `path` is `folder` itself or lies under it (both resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def remove_owned(
    path: str | Path,
    owner_dir: str | Path,
    looks_like: Callable[[Path], bool] | None = None,
    what: str = "folder",
) -> None:
    """Remove `path` (a folder, file or link) if it exists, but only when it lies strictly
    inside `owner_dir` and `looks_like(path)` says it is what the tool made (an empty folder
    always does); anything else is refused with a `UnsafePathError`."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    where, owner = _location(path), Path(owner_dir).resolve()
    if owner not in where.parents:
        raise UnsafePathError(
            f"{path}: not removed, it is not inside {owner_dir} (the {what}s kidwhisper owns)"
        )
    if path.is_symlink() or path.is_file():
        if path.is_file() and not path.is_symlink() and looks_like and not looks_like(path):
            raise UnsafePathError(f"{path}: not removed, it does not look like a {what}")
        path.unlink()
        return
    empty = not any(path.iterdir())
    if not empty and looks_like is not None and not looks_like(path):
        raise UnsafePathError(
            f"{path}: not removed, it does not look like a {what} kidwhisper wrote: "
            "move it away or choose another name"
        )
    shutil.rmtree(path)


def _tmp_name(target: Path) -> Path:
    return target.with_name(f"{TMP_PREFIX}{target.name}-{os.getpid()}")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; it becomes `path` (os.replace) when
    the block ends without an error, and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    binary = "b" in mode
    try:
        with open(tmp, mode, **({} if binary else {"encoding": "utf-8"})) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary file beside it."""
    with atomic_open(path, "w") as out:
        out.write(text)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file beside it."""
    with atomic_open(path, "wb") as out:
        out.write(data)
    return Path(path)


def check_replace(
    target: str | Path, force: bool, looks_like: Callable[[Path], bool] | None, what: str
) -> None:
    """Refuse to replace an existing `target` without `force`, or one that does not look
    like a `what` (a folder the tool wrote) even with it. Call before any heavy work."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if not force:
        raise UnsafePathError(f"{target} already exists: pass --force to replace it")
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        return  # an empty folder: nothing to lose
    if target.is_symlink() or not target.is_dir():
        raise UnsafePathError(f"{target}: exists and is not a {what} folder; not replaced")
    if looks_like is not None and not looks_like(target):
        raise UnsafePathError(
            f"{target}: not replaced, it does not look like a {what} folder kidwhisper wrote: "
            "choose another output folder"
        )


@contextlib.contextmanager
def atomic_folder(
    target: str | Path,
    force: bool = False,
    looks_like: Callable[[Path], bool] | None = None,
    what: str = "model",
) -> Iterator[Path]:
    """Yield a fresh folder `.tmp-<name>-<pid>` beside `target`; when the block ends without
    an error it is renamed to `target`. An existing `target` is replaced only with `force`
    and when it looks like what it replaces (`check_replace`); on an error nothing changes."""
    target = Path(target)
    check_replace(target, force, looks_like, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(target)
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of this pid's earlier crash
    tmp.mkdir()
    old = target.with_name(f"{TMP_PREFIX}old-{target.name}-{os.getpid()}")
    try:
        yield tmp
        check_replace(target, force, looks_like, what)  # nothing appeared meanwhile
        if target.exists():
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            if old.exists():  # put the old output back
                os.replace(old, target)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def refuse_output_over_input(
    out: str | Path, inputs: Iterable[str | Path], what: str = "--out"
) -> None:
    """A `UnsafePathError` when `out` is one of `inputs`, lies inside one, or holds one
    (replacing it would delete the input)."""
    for source in inputs:
        if lies_inside(out, source) or lies_inside(source, out):
            raise UnsafePathError(
                f"{what} {out}: would write over the input {source}; choose an output outside it"
            )


def looks_like_model(folder: Path) -> bool:
    """A transformers or CTranslate2 model folder: config.json beside weights."""
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    return (folder / "config.json").is_file() and any(
        (folder / name).is_file() for name in (*weights, "model.bin")
    )
