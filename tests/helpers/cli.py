"""The entry points run as a user runs them, and what a run leaves on disk."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.helpers.configs import ROOT


def run_train(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python train.py <overrides>`` as a user runs it, offline, from the repository root."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "train.py", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=600,
    )


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
