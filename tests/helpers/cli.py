"""The entry points run as a user runs them, and what a run leaves on disk.

``train_py`` and ``eval_py`` run train.py's and eval.py's command line in this process: the same path from the
arguments through Hydra, its callbacks and the checks to the result, without the seconds each new Python
spends importing torch. What needs a process of its own (a kill, a signal, a launcher, what a fresh
interpreter imports) starts one in its test.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import runpy
import signal
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

from hydra.core.global_hydra import GlobalHydra

from medllm.runs.locks import release_locks
from tests.helpers.configs import ROOT


@contextlib.contextmanager
def _working_directory(path: Path):
    """``contextlib.chdir`` of Python 3.11, for 3.10."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _command_line(name: str, args: tuple[str, ...], check: bool) -> subprocess.CompletedProcess:
    """``python <name>.py <args>`` in this process: its exit status, what it printed and logged."""
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    signals = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}  # eval.py sets one
    code = 0
    with (
        mock.patch.object(sys, "argv", [f"{name}.py", *args]),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        _working_directory(ROOT),
    ):
        try:
            runpy.run_path(str(ROOT / f"{name}.py"), run_name="__main__")  # as `python <name>.py` runs it
        except SystemExit as stop:
            if isinstance(stop.code, str):  # what Python prints when a process ends so
                print(stop.code, file=sys.stderr)
                code = 1
            else:
                code = stop.code or 0
        finally:
            release_locks()  # what the process's exit does (atexit): a job that ended in sys.exit holds its folders
            GlobalHydra.instance().clear()
            for handler in root.handlers:  # Hydra's, writing into this call's streams and run dir
                if handler not in handlers:
                    root.removeHandler(handler)
                    handler.close()
            root.setLevel(level)
            for signum, handler in signals.items():
                signal.signal(signum, handler)
    done = subprocess.CompletedProcess([f"{name}.py", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{name}.py {' '.join(args)} exited {code}:\n{done.stderr[-3000:]}")
    return done


def train_py(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python train.py <overrides>``, run in this process."""
    return _command_line("train", overrides, check)


def eval_py(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python eval.py <overrides>``, run in this process."""
    return _command_line("eval", overrides, check)


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file under the dir (hidden ones too) and the digest of its bytes."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
