"""Running a foreign main.py with as little reach as this machine allows.

- **File system and network**: where bubblewrap (`bwrap`, Debian package bubblewrap) works,
  main.py runs in it: the whole file system read-only, the work folder the only writable
  place, a private /dev (GPUs bound in), /proc and process ids, no network, no capabilities
  (even when started as root), and the sandbox dies with its parent. Otherwise `unshare -n`
  (or `-rn`) cuts the network only. Where neither works the run is refused unless the user
  allows the network.
- **Processes**: main.py leads a new session; when it ends or runs past its time the whole
  process group is killed, so a background grandchild cannot go on writing. Inside bwrap the
  process-id namespace also takes children that left the group.
- **Environment**: nothing of the caller's but the locale, PATH and device selection; HOME,
  TMPDIR and every cache inside the work folder; the Hub offline.

Availability is found by running each tool once (`bwrap ... true`): an installed bwrap may
still be unusable where unprivileged user namespaces are disabled.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kidwhisper.submission.common import OFFLINE_ENV, SubmissionError

log = logging.getLogger(__name__)

KEPT_ENV = (
    "PATH",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
BWRAP = (
    "bwrap",
    "--ro-bind", "/", "/",
    "--dev", "/dev",
    "--proc", "/proc",
    "--unshare-net",
    "--unshare-pid",
    "--die-with-parent",
    "--cap-drop", "ALL",  # started as root, bwrap would leave main.py every capability
)  # fmt: skip
UNSHARE = (("unshare", "-n"), ("unshare", "-rn"))  # as root; as a user, in a user namespace
PROBE_SECONDS = 30
NO_ISOLATION = (
    "cannot cut the network for main.py here (bwrap and unshare -n both failed): "
    "install bubblewrap (apt-get install bubblewrap), or pass --allow-network to run "
    "it with the network on"
)


@dataclass(frozen=True)
class Isolation:
    """How main.py is confined: the command prefix and a line for the report."""

    kind: str  # "bwrap", "unshare" or "none"
    prefix: tuple[str, ...]
    network: str


def _works(command: list[str]) -> bool:
    try:
        done = subprocess.run(command, capture_output=True, timeout=PROBE_SECONDS)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@functools.cache
def detect_isolation() -> Isolation:
    """The strongest confinement this machine allows (tried, not guessed)."""
    if _works([*BWRAP, "true"]):
        return Isolation("bwrap", BWRAP, "off (bubblewrap: read-only system, no network)")
    for prefix in UNSHARE:
        if _works([*prefix, "true"]):
            return Isolation(
                "unshare",
                prefix,
                f"off ({' '.join(prefix)}); the file system is NOT confined "
                "(install bubblewrap for that)",
            )
    return Isolation("none", (), "ON: NOT isolated (--allow-network); the Hub set offline")


def choose_isolation(allow_network: bool) -> Isolation:
    """`detect_isolation()`, or a SubmissionError when it cannot cut the network and the
    user has not allowed the network."""
    isolation = detect_isolation()
    if isolation.kind == "none":
        if not allow_network:
            raise SubmissionError(NO_ISOLATION)
        log.warning("main.py runs WITH the network (--allow-network): no bwrap or unshare")
    return isolation


def private_dirs(workdir: Path) -> dict[str, Path]:
    """HOME, TMPDIR and the caches main.py's libraries write to, all inside `workdir`."""
    home, cache = workdir / "home", workdir / "home" / ".cache"
    return {
        "HOME": home,
        "TMPDIR": workdir / "tmp",
        "TMP": workdir / "tmp",
        "TEMP": workdir / "tmp",
        "XDG_CACHE_HOME": cache,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "HF_HOME": cache / "huggingface",  # the runtime has no Hub cache
        "TORCH_HOME": cache / "torch",
        "TRITON_CACHE_DIR": cache / "triton",
        "MPLCONFIGDIR": home / ".config" / "matplotlib",
    }


def runtime_env(workdir: Path) -> dict[str, str]:
    """A minimal environment: no PYTHONPATH or virtualenv variables, private HOME and
    caches (created here), the Hub offline."""
    env = {name: os.environ[name] for name in KEPT_ENV if name in os.environ}
    env.update(OFFLINE_ENV)
    env.update(PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    for name, folder in private_dirs(workdir).items():
        folder.mkdir(parents=True, exist_ok=True)
        env[name] = str(folder)
    return env


def sandboxed(command: list[str], workdir: Path, isolation: Isolation) -> list[str]:
    """`command` under `isolation`; in bwrap, `workdir` is the one writable place."""
    if isolation.kind != "bwrap":
        return [*isolation.prefix, *command]
    devices = [arg for gpu in sorted(glob.glob("/dev/nvidia*")) for arg in ("--dev-bind", gpu, gpu)]
    where = str(workdir)
    return [*isolation.prefix, *devices, "--bind", where, where, "--chdir", where, *command]


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(process.pid, signal.SIGKILL)


def run_confined(
    command: list[str], workdir: Path, log_file, isolation: Isolation, timeout: float | None
) -> int | None:
    """Run `command` from `workdir` confined, its output into `log_file`; its exit code, or
    None when it ran past `timeout` seconds. Its whole process group is killed either way."""
    process = subprocess.Popen(
        sandboxed(command, workdir, isolation),
        cwd=workdir,
        env=runtime_env(workdir),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a group of its own, killed whole below
    )
    try:
        returncode: int | None = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        returncode = None
    finally:  # also on Ctrl-C: nothing of main.py's outlives the run
        _kill_group(process)
        process.wait()
    return returncode
