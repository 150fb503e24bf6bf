"""What the packager, the runner and the shipped main.py share: the names of the files in a
submission and in the runtime's folder, the offline environment, and the submission error.

Shipped inside every submission.zip (the shipped main.py imports it), so it imports only
the leaf errors module.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from kidwhisper.errors import UserError

SETTINGS_FILE = "kidwhisper_settings.json"  # batch size, decoding options, language, task
MODEL_DIR = "model"  # the model folder at the root of the zip
METADATA = "utterance_metadata.jsonl"  # the runtime's data/ files
FORMAT = "submission_format.jsonl"
SUBMISSION = Path("submission") / "submission.jsonl"  # what main.py writes, from its cwd
# A name that is a file name everywhere: letters, digits, `._-`, not starting with a dot.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


class SubmissionError(UserError, ValueError):
    """A submission that cannot be built, unpacked or run; the message says why."""


def unsafe_member(name: str) -> str | None:
    """Why a zip member name would land outside the folder it is unpacked into, or None."""
    if not name or "\0" in name:
        return "empty name or NUL byte"
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' in its path"
    return None


def plain_name(name: object) -> bool:
    """Whether `name` can be used as a file name as it is (no separator, no `..`, no dot file)."""
    return isinstance(name, str) and PLAIN_NAME.fullmatch(name) is not None
