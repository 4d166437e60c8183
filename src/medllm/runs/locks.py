"""One command a folder at a time: a job holds a lock on every folder it writes results into.

The kernel drops a lock when its process ends, killed or not, so a crashed run never leaves a folder
locked. A second command into a locked folder is refused before it writes anything.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from medllm.runs.layout import RunDirError

T = TypeVar("T")

_held_locks: list[int] = []
_made_to_lock: list[Path] = []  # folders that lock() created; removed again if the run leaves them empty


class RunDirInUse(RunDirError):
    """Another process holds the folder's lock: a run writing into it now."""


def lock(path: Path) -> None:
    """Hold an exclusive lock on the folder ``path`` until ``release_locks``; RunDirInUse if another
    process holds it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock
        return
    if not path.exists():
        if not _made_to_lock:
            atexit.register(release_locks)  # a run that stops before training leaves no empty folder behind
        _made_to_lock.append(path)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirInUse(
            f"{path} is in use: another train.py is writing into it now; wait for it to end (then resume it with "
            "ckpt_path=auto if it stops unfinished), or choose another folder."
        ) from None
    except OSError:  # a filesystem without locks (some network mounts): no lock
        os.close(fd)
        return
    _held_locks.append(fd)


def release_locks() -> None:
    while _held_locks:
        with contextlib.suppress(OSError):
            os.close(_held_locks.pop())
    while _made_to_lock:
        with contextlib.suppress(OSError):  # not empty: the run wrote into it
            _made_to_lock.pop().rmdir()


def claim(run_dir: Path, check: Callable[[], T]) -> T:
    """Lock ``run_dir`` and run ``check`` (a RunDirError: refused); a refused job releases its locks, stops
    logging into the dir and exits with one line."""
    try:
        lock(run_dir)
        return check()
    except RunDirError as err:
        release_locks()
        detach_file_logs(run_dir)
        sys.exit(f"error: {err}")


def detach_file_logs(run_dir: Path) -> None:
    """Stop logging into files inside ``run_dir`` (Hydra's train.log), which belong to the run there."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(run_dir.resolve()):
            root.removeHandler(handler)
            handler.close()
