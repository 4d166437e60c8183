"""A kill during a checkpoint save leaves the previous checkpoint whole and loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import torch

from medllm.training.checkpoint_io import AtomicCheckpointIO

CHILD = textwrap.dedent(
    """
    import sys, time, torch
    from pathlib import Path
    from medllm.training.checkpoint_io import AtomicCheckpointIO

    target, marker = Path(sys.argv[1]), Path(sys.argv[2])

    class Stall:
        # Pickled in the middle of the checkpoint: by then part of the file is written.
        def __reduce__(self):
            marker.write_text("saving")
            time.sleep(60)
            return (int, (0,))

    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "weights": torch.ones(1000)}, target)
    io.save_checkpoint({"step": 2, "weights": torch.zeros(100_000), "stall": Stall(), "tail": torch.ones(10)}, target)
    """
)


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    target, marker = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "saving"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(target), str(marker)], env=dict(os.environ))
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        assert child.poll() is None, "the child process ended early"
        time.sleep(0.05)
    assert marker.exists()
    child.send_signal(signal.SIGKILL)
    child.wait()
    leftovers = [p.name for p in target.parent.iterdir() if p.name != target.name]
    assert leftovers and all(".tmp-" in name for name in leftovers)  # the partial save is a side file
    checkpoint = AtomicCheckpointIO().load_checkpoint(target, weights_only=False)
    assert checkpoint["step"] == 1 and torch.equal(checkpoint["weights"], torch.ones(1000))


def test_a_finished_save_replaces_the_file_whole(tmp_path):
    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)
    io.save_checkpoint({"step": 2}, target)
    assert io.load_checkpoint(target, weights_only=False)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
