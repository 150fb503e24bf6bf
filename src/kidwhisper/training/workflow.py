"""The seed's workflow around experiment folders: numbered folders made from a template with
a main.py (`new-experiment`), running one (`run_folder`), a results table for the README
(`report`), and archiving a run's checkpoints (`archive`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from kidwhisper.config import FULL, dump_config, load_config
from kidwhisper.files import UnsafePathError, atomic_write_text, check_plain_name
from kidwhisper.inference.scoring import percent
from kidwhisper.training.checkpoint import looks_like_run
from kidwhisper.training.experiments import run_experiment
from kidwhisper.training.results import trainable_share

# --- the seed's workflow: sequential folders, templates, a results table, archiving ---------

TEMPLATES = "templates"
RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"
MAIN_PY = '''"""Run this experiment: python -m experiments.{name}.main (or torchrun ... -m)."""

from kidwhisper.training.workflow import run_folder

run_folder(__file__)
'''


def _number(folder: Path) -> int | None:
    tail = folder.name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def new_experiment(kind: str, root: Path, source: str | None = None) -> Path:
    """Create `<root>/<kind>_<NNN>/` (the next number across all experiments) with the config
    of `source` (an experiment name or a config file; default the template) and a main.py."""
    check_plain_name(kind, "new-experiment NAME")
    root.mkdir(parents=True, exist_ok=True)
    numbers = [n for p in root.iterdir() if p.is_dir() and (n := _number(p)) is not None]
    folder = root / f"{kind}_{max(numbers, default=0) + 1:03d}"
    if source is None:
        config_file = root / TEMPLATES / "config_template.yaml"
    elif (root / source / "config.yaml").is_file():
        config_file = root / source / "config.yaml"
    else:
        config_file = Path(source)
    config = load_config(config_file, check_paths=False)
    # Relative, so the folder can be committed and cloned; main.py sets it again anyway.
    config.output.name, config.output.experiments_dir = folder.name, os.path.relpath(root)
    folder.mkdir()
    (folder / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    (folder / "main.py").write_text(MAIN_PY.format(name=folder.name), encoding="utf-8")
    (folder / "__init__.py").touch()
    if not (root / "__init__.py").exists():
        (root / "__init__.py").touch()
    return folder


def run_folder(main_file: str, argv: list[str] | None = None) -> dict:
    """Run the experiment whose folder holds `main_file` (what each main.py calls).
    Extra command-line arguments are config overrides (`training.lr=2e-5`)."""
    import logging
    import sys

    folder = Path(main_file).resolve().parent
    overrides = sys.argv[1:] if argv is None else argv
    overrides = [*overrides, f"output.name={folder.name}"]
    overrides.append(f"output.experiments_dir={os.path.relpath(folder.parent)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run_experiment(load_config(folder / "config.yaml", overrides))


def collect_results(root: Path) -> list[dict]:
    """One row per experiment with a metrics.json, in experiment order."""
    rows = []
    for path in sorted(root.glob("*/metrics.json"), key=lambda p: (_number(p.parent) or 0, p)):
        m = json.loads(path.read_text())
        before = _honest_before(path.parent, m.get("eval_before") or {})
        after = m.get("eval_average") or m.get("eval_after") or {}  # the final model's
        rows.append(
            {
                "name": path.parent.name,
                "variant": m.get("variant"),
                "steps": m.get("steps"),
                "before": before.get("wer"),
                "after": after.get("wer"),
                "best": m.get("best_wer"),
                "by_age": after.get("wer_by_age", {}),
                "minutes": (m.get("wall_seconds") or 0) / 60,
                "trainable": m.get("trainable_params"),
                "total": m.get("total_params"),
                "finished": m.get("finished", False),
            }
        )
    return rows


def _honest_before(folder: Path, before: dict) -> dict:
    """The "before" evaluation only if it scored the starting model in the window it was
    trained in (30 s for Whisper's own weights). Runs before that rule recorded no context:
    their figure counts only if the whole run used 30 s windows; else it is left out (n/a)."""
    if "audio_context" in before:
        return before
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return before if (saved.get("model") or {}).get("audio_context") == FULL else {}


def results_table(rows: list[dict]) -> str:
    lines = [
        "| experiment | variant | steps | WER before | WER after | best | WER by age (after) | "
        "minutes | trainable params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ages = ", ".join(f"{k}: {percent(v)}" for k, v in sorted(r["by_age"].items()))
        status = "" if r["finished"] else " (unfinished)"
        lines.append(
            f"| {r['name']}{status} | {r['variant']} | {r['steps']} | {percent(r['before'])} | "
            f"{percent(r['after'])} | {percent(r['best'])} | {ages} | {r['minutes']:.1f} | "
            f"{trainable_share(r['trainable'], r['total'])} |"
        )
    return "\n".join(lines)


def update_readme(readme: Path, table: str) -> None:
    """Replace the text between the results markers of `readme` (appending them if absent)."""
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    block = f"{RESULTS_START}\n{table}\n{RESULTS_END}"
    if RESULTS_START in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_START, 1)
        text = head + block + rest.split(RESULTS_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Latest results\n\n" + block + "\n"
    atomic_write_text(readme, text)


def archive(name: str, checkpoints_root: Path) -> Path:
    """Move `checkpoints/<name>` (weights, TensorBoard logs) to `checkpoints/archived/<name>`."""
    check_plain_name(name, "archive RUN")
    source = checkpoints_root / name
    target = checkpoints_root / "archived" / name
    if not source.is_dir() or source.is_symlink():
        raise FileNotFoundError(f"{source}: no such run to archive")
    if name == "archived" or not looks_like_run(source):
        raise UnsafePathError(
            f"{source}: not a run folder (no checkpoints, final model or TensorBoard logs); "
            "not moved"
        )
    if target.exists():
        raise FileExistsError(f"{target} already exists: rename or remove it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))
    return target
