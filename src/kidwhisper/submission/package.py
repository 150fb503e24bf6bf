"""`kidwhisper package-submission`: a model and the code that decodes it, in one zip.

The archive is what the competition runtime unzips into `src/` and runs:

    main.py                    the entry point (main_template.py of this package)
    kidwhisper_settings.json   batch size, decoding options (beam size, length penalty...),
                               language and task
    kidwhisper/                only the modules inference needs (kidwhisper is not installed
                               there); `kidwhisper/__init__.py` and `models/__init__.py` are stubs
    model/                     safetensors, config.json (with the audio context), tokenizer,
                               generation and preprocessor configs

Before writing, every import in the shipped code is checked with `ast`: a `kidwhisper.*`
import must be shipped too, anything else must be in the standard library or the runtime's
packages; a missing one fails packaging with the file and line, rather than failing in the
runtime after an upload.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import kidwhisper
from kidwhisper.submission.common import MODEL_DIR, SETTINGS_FILE, SubmissionError, unsafe_member

if TYPE_CHECKING:
    from kidwhisper.inference.decoding import DecodingOptions

PACKAGE_ROOT = Path(kidwhisper.__file__).resolve().parent
MAIN_TEMPLATE = Path(__file__).resolve().parent / "main_template.py"

# What main.py imports (the model loader `models.factory.load_model`, `inference.transcribe`)
# and everything they import, even inside functions: `check_imports` proves the list whole.
# The packages' __init__ files define nothing, so importing a module loads only its own
# imports, never the whole of kidwhisper.
SHIPPED_PACKAGES = (
    "kidwhisper",
    "kidwhisper.data",
    "kidwhisper.models",
    "kidwhisper.inference",
    "kidwhisper.submission",
)
SHIPPED_MODULES = (
    "kidwhisper.config",
    "kidwhisper.settings",
    "kidwhisper.schema",
    "kidwhisper.errors",
    "kidwhisper.device",
    "kidwhisper.data.audio",
    "kidwhisper.data.augment",
    "kidwhisper.data.dataset",
    "kidwhisper.data.problems",
    "kidwhisper.data.text",
    "kidwhisper.models.variants",
    "kidwhisper.models.bundled",
    "kidwhisper.models.ct2",
    "kidwhisper.models.factory",
    "kidwhisper.models.short_input",
    "kidwhisper.inference.decoding",
    "kidwhisper.inference.batching",
    "kidwhisper.submission.common",
)
# Third-party packages of the competition runtime (Python 3.11, torch, transformers, peft,
# librosa, soundfile, numpy) and what they install with them.
RUNTIME_PACKAGES = frozenset(
    {
        "torch",
        "transformers",
        "tokenizers",
        "huggingface_hub",
        "safetensors",
        "peft",
        "numpy",
        "librosa",
        "soxr",  # a librosa dependency
        "scipy",
        "soundfile",
        "tqdm",
        "yaml",
    }
)


# --- the shipped code --------------------------------------------------------------------


def module_file(module: str) -> str:
    """Path inside the zip of a module or package: kidwhisper/models/variants.py."""
    parts = module.split(".")
    if module in SHIPPED_PACKAGES:
        return "/".join([*parts, "__init__.py"])
    return "/".join(parts) + ".py"


def shipped_sources() -> dict[str, str]:
    """Module name -> source text of everything shipped under kidwhisper/."""
    sources = {}
    for module in (*SHIPPED_PACKAGES, *SHIPPED_MODULES):
        relative = Path(module_file(module)).relative_to("kidwhisper")
        sources[module] = (PACKAGE_ROOT / relative).read_text(encoding="utf-8")
    return sources


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(node: ast.AST, in_function: bool = False):
    """(node, whether it is inside a function) for every node under `node`, except the
    bodies of `if TYPE_CHECKING:` blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            children = child.orelse
        else:
            children = [child]
        for other in children:
            yield other, in_function
            nested = in_function or isinstance(other, ast.FunctionDef | ast.AsyncFunctionDef)
            yield from _runtime_nodes(other, nested)


def _imports(module: str, source: str, is_package: bool) -> list[tuple[int, str, list[str], bool]]:
    """(line, imported module, names taken from it, whether it runs on import) for each
    import of `module`."""
    found = []
    for node, in_function in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, [], not in_function) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, *([base] if base else [])])
            names = [alias.name for alias in node.names]
            found.append((node.lineno, base, names, not in_function))
    return found


def check_imports(sources: dict[str, str], main: str | None = None) -> None:
    """Fail unless every import of the shipped code can be satisfied in the runtime.

    `sources` maps module names (kidwhisper.data.dataset; kidwhisper for the package) to
    source text; `main` is main.py's. Every `kidwhisper.*` import, even one inside a
    function, must name a shipped module (a package's __init__ defines nothing: only its
    shipped submodules can be imported). Any other import that runs when the module is
    imported must be in the standard library or `RUNTIME_PACKAGES`; imports inside functions
    are left alone there (they are how kidwhisper reaches optional packages, e.g. the
    bundled weights, that inference never uses).
    """
    files = [(module, module_file(module), source) for module, source in sources.items()]
    if main is not None:
        files.append(("__main__", "main.py", main))
    problems = []
    for module, path, source in files:
        for line, name, names, on_import in _imports(module, source, module in SHIPPED_PACKAGES):
            problems += _problems(f"{path}:{line}", name, names, on_import, sources)
    if problems:
        raise SubmissionError(
            "the submission's code would fail to import in the runtime:\n  "
            + "\n  ".join(problems)
            + "\nadd the module(s) to kidwhisper.submission.package.SHIPPED_MODULES "
            "or remove the import"
        )


def _problems(
    where: str, name: str, names: list[str], on_import: bool, sources: dict[str, str]
) -> list[str]:
    top = name.split(".")[0]
    if top != "kidwhisper":
        known = {"", "__future__", *sys.stdlib_module_names, *RUNTIME_PACKAGES}
        if on_import and top not in known:
            return [f"{where} imports {name}, which the competition runtime does not have"]
        return []
    if name not in sources:
        return [f"{where} imports {name}, which is not in the submission"]
    if name not in SHIPPED_PACKAGES:
        return []
    defined = {"__version__"} if name == "kidwhisper" else set()
    missing = [n for n in names if f"{name}.{n}" not in sources and n not in defined]
    if missing:  # a package's __init__ defines nothing: only its shipped submodules
        return [
            f"{where} imports {', '.join(missing)} from {name}, a package that defines "
            f"nothing (no {', '.join(f'{name}.{n}' for n in missing)} module is shipped)"
        ]
    return []


# --- packaging ---------------------------------------------------------------------------


@dataclass
class PackageReport:
    path: Path
    size: int
    entries: list[tuple[str, int]]  # (name in the zip, uncompressed bytes)
    source: str
    audio_context: str | float
    parameters: int
    seconds: float
    warnings: list[str] = dataclasses.field(default_factory=list)

    def summary_lines(self) -> list[str]:
        groups: dict[str, list[int]] = {}
        for name, size in self.entries:
            top = name.split("/")[0] + ("/" if "/" in name else "")
            groups.setdefault(top, []).append(size)
        lines = [
            f"wrote {self.path} ({self.size / 2**20:.1f} MiB, {len(self.entries)} files, "
            f"{self.seconds:.1f} s)",
            f"model {self.source}: {self.parameters / 1e6:.1f}M parameters, "
            f"audio context {self.audio_context}",
        ]
        for top, sizes in groups.items():
            files = f"{len(sizes)} files, " if len(sizes) > 1 else ""
            lines.append(f"  {top:<26} {files}{sum(sizes) / 2**10:,.1f} KiB")
        return lines + [f"warning: {warning}" for warning in self.warnings]


def package_submission(
    model_source: str,
    out_zip: str | Path,
    audio_context: str | float | None = None,
    batch_size: int | None = None,
    options: DecodingOptions | None = None,
    variant: str | None = None,
) -> PackageReport:
    """Write a competition submission.zip for `model_source` (a transformers folder, a
    checkpoint, `bundled:tiny.en`...). `audio_context` unset keeps the model's own.

    The batch size and decoding options default to `kidwhisper evaluate`'s, so the runtime
    decodes exactly as evaluate scored: under the `batch` audio context the batch size sets
    each clip's padding, which moves the WER. A larger batch is faster on a GPU; measure
    its WER with `kidwhisper evaluate --batch-size` or `run-submission` first.
    """
    from kidwhisper.config import EvaluationConfig
    from kidwhisper.inference.evaluation import decoding_options
    from kidwhisper.models.factory import load_model

    start = time.perf_counter()
    out_zip = _check_out(model_source, Path(out_zip))
    batch_size = EvaluationConfig.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise SubmissionError(f"batch size must be at least 1, not {batch_size}")
    sources = shipped_sources()
    main = MAIN_TEMPLATE.read_text(encoding="utf-8")
    check_imports(sources, main)
    wm = load_model(model_source, variant)  # with the context it was trained with
    warnings = _set_context(wm, model_source, audio_context)
    options = options or decoding_options(EvaluationConfig())
    settings = {
        "source": model_source,
        "variant": wm.variant.name,
        "audio_context": wm.audio_context,
        "language": wm.language,
        "task": wm.task,
        "batch_size": batch_size,
        "num_workers": None,  # main.py: a few on a GPU machine, none on a CPU
        "cuda_dtype": "float16",
        "decoding": dataclasses.asdict(options),
        "kidwhisper_version": kidwhisper.__version__,
        "packaged": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    entries = _write_zip(out_zip, wm, main, settings, sources)
    return PackageReport(
        path=out_zip,
        size=out_zip.stat().st_size,
        entries=entries,
        source=model_source,
        audio_context=wm.audio_context,
        parameters=wm.params,
        seconds=time.perf_counter() - start,
        warnings=warnings,
    )


def _check_out(model_source: str, out_zip: Path) -> Path:
    """`out_zip`, refused when it is a folder or lies inside the model folder it packages
    (the zip would be written over, or into, its own input)."""
    source = Path(model_source).expanduser()
    if out_zip.is_dir():
        raise SubmissionError(f"--out {out_zip}: a folder; name the zip to write")
    if source.exists() and out_zip.resolve().is_relative_to(source.resolve()):
        raise SubmissionError(
            f"--out {out_zip}: inside {model_source}, the model being packaged; "
            "write the zip somewhere else"
        )
    return out_zip


def _set_context(wm, model_source: str, audio_context: str | float | None) -> list[str]:
    """Package with another audio context than the model's own (saved in its config.json);
    a warning when it differs from what the model was trained with."""
    from kidwhisper.config import parse_context
    from kidwhisper.models.short_input import record_context

    if audio_context is None or parse_context(audio_context) == wm.audio_context:
        return []
    warning = (
        f"{model_source} was trained with audio context {wm.audio_context}, packaged with "
        f"{parse_context(audio_context)}: check its WER with `kidwhisper run-submission` "
        "(a zero-shot model loses a lot under `batch`)"
    )
    wm.audio_context = parse_context(audio_context)
    record_context(wm.model.config, wm.audio_context)
    return [warning]


def _write_zip(
    out_zip: Path, wm, main: str, settings: dict, sources: dict[str, str]
) -> list[tuple[str, int]]:
    """main.py, the settings, the shipped modules and the model, into a temporary zip that
    is checked and then renamed into place; returns its (name, size) entries."""
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(
        prefix=f".{out_zip.name}.", suffix=".partial", dir=out_zip.parent
    )
    os.close(handle)
    partial = Path(name)
    try:
        entries = _fill_zip(partial, wm, main, settings, sources)
    except BaseException:
        partial.unlink(missing_ok=True)  # the temporary file this function made
        raise
    partial.chmod(0o644)  # mkstemp made it private; a zip is for sharing
    partial.replace(out_zip)
    return entries


def _fill_zip(
    partial: Path, wm, main: str, settings: dict, sources: dict[str, str]
) -> list[tuple[str, int]]:
    with tempfile.TemporaryDirectory(prefix="kidwhisper-package-") as tmp:
        model_dir = wm.save(Path(tmp) / MODEL_DIR)
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("main.py", main)
            archive.writestr(SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
            for module, source in sources.items():
                archive.writestr(module_file(module), source)
            for path in sorted(model_dir.rglob("*")):
                if path.is_file():
                    name = str(PurePosixPath(MODEL_DIR, *path.relative_to(model_dir).parts))
                    # Weights barely compress; storing them keeps packaging and unzipping fast.
                    kind = zipfile.ZIP_STORED if path.suffix == ".safetensors" else None
                    archive.write(path, name, compress_type=kind)
    with zipfile.ZipFile(partial) as archive:
        entries = [(info.filename, info.file_size) for info in archive.infolist()]
    bad = [name for name, _ in entries if unsafe_member(name)]
    if bad or "main.py" not in dict(entries):
        raise SubmissionError(f"internal error: bad zip members {bad} or no main.py at the root")
    return entries
