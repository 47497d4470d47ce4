"""The run store `runs/<study>/`: paths, atomic writes and completion markers.

Everything under runs/ is append-only: stages write new files atomically (temp file + rename)
and mark a finished unit with a DONE file written last, so a killed process never leaves a
half-written unit that looks complete. Files get the ordinary mode (0666 less the umask), not
the 0600 of a bare temp file. One process at a time works on a study: `run_lock` holds
`runs/<study>/.run.lock` (an flock, released when the holder dies) and names the holder's pid.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from leaklab.io import REPO_ROOT


def runs_root() -> Path:
    """Root of all run folders: $LEAKLAB_RUNS, default `<repo>/runs`."""
    return Path(os.environ.get("LEAKLAB_RUNS", REPO_ROOT / "runs"))


def cache_root() -> Path:
    """Model cache: $LEAKLAB_CACHE, default ~/.cache/leaklab."""
    return Path(os.environ.get("LEAKLAB_CACHE", Path.home() / ".cache" / "leaklab"))


def train_dir(study_runs: Path, model_label: str, arm: str, seed: int) -> Path:
    return study_runs / "train" / model_label / arm / f"seed{seed}"


def logs_dir(study_runs: Path) -> Path:
    return study_runs / "logs"


FRAME_REL = "analysis/frame.parquet"  # the tidy frame, relative to runs/<study>/


def analysis_dir(study_runs: Path) -> Path:
    return study_runs / "analysis"


def report_dir(study_runs: Path) -> Path:
    return study_runs / "report"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, rename: readers see the old or the new bytes,
    never a torn file; on failure (ENOSPC, EROFS) the old file is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any new file
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any):
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _nan_to_none(obj: Any):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically; NaN/inf become null (strict JSON), numpy scalars become numbers."""
    text = json.dumps(_nan_to_none(json.loads(json.dumps(obj, default=_json_default))), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(path, text + "\n")


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line and fsync (a killed writer loses at most the line in flight)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(_nan_to_none(record), default=_json_default, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def is_done(folder: Path) -> bool:
    return (Path(folder) / "DONE").exists()


def mark_done(folder: Path, info: dict | None = None) -> None:
    """Write the DONE marker last: its presence means every other file of the unit is complete."""
    atomic_write_json(Path(folder) / "DONE", info or {})


# ---------------------------------------------------------------- one run at a time per study

RUN_LOCK_NAME = ".run.lock"
_HELD: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth): re-entrant within a process


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another process (holder unknown)"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('since', '?')}"
            f" ({info.get('command', '?')})")


@contextlib.contextmanager
def run_lock(study_runs: Path, command: str = "") -> Iterator[Path]:
    """Hold `runs/<study>/.run.lock` for the duration: a second `leaklab run/train/eval/data` of
    the same study fails at once with a message naming the holder's pid. The lock is an flock,
    so a killed holder releases it; re-entrant within one process."""
    import fcntl

    study_runs = Path(study_runs)
    study_runs.mkdir(parents=True, exist_ok=True)
    path = study_runs / RUN_LOCK_NAME
    key = str(path.resolve())
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield path
        finally:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth - 1)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        from leaklab.yamlio import ConfigError

        raise ConfigError(f"{path}: study {study_runs.name!r} is already being worked on by {_holder(path)}; "
                          "wait for it to finish (or stop that process) and run again") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
    _HELD[key] = (fd, 1)
    try:
        yield path
    finally:
        fd, depth = _HELD[key]
        if depth <= 1:
            del _HELD[key]
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing releases the flock
        else:
            _HELD[key] = (fd, depth - 1)
