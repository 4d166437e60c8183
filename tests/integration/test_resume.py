"""Never lose a run: a run killed mid-training and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tests.conftest import ROOT, run_train

pytestmark = pytest.mark.slow

OVERRIDES = [
    "experiment=smoke",
    "trainer.max_steps=24",
    "trainer.val_check_interval=12",
    "trainer.accumulate_grad_batches=2",
    "callbacks.checkpoint.every_n_train_steps=3",
]


def test_killed_run_resumed_with_ckpt_path_auto_equals_an_uninterrupted_run(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run_train(*OVERRIDES, f"hydra.run.dir={whole}")

    process = subprocess.Popen(
        [sys.executable, "train.py", *OVERRIDES, f"hydra.run.dir={broken}"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list((broken / "checkpoints").glob("step*.ckpt")) and time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail("the run ended before its first checkpoint")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (broken / "summary.json").exists()  # it really was stopped before the end

    run_train(*OVERRIDES, f"hydra.run.dir={broken}", "ckpt_path=auto")
    expected = load_file(whole / "adapter" / "adapter_model.safetensors")
    resumed = load_file(broken / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == resumed.keys() and expected
    for name, value in expected.items():
        assert (resumed[name] - value).abs().max() <= 1e-6, name


def test_resume_from_an_explicit_checkpoint_of_another_run_dir(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    run_train(*OVERRIDES, "trainer.max_steps=6", f"hydra.run.dir={first}")
    out = run_train(
        *OVERRIDES, "trainer.max_steps=9", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={second}"
    )
    summary = json.loads((second / "summary.json").read_text())
    assert summary["steps"] == 9, out.stderr[-2000:]
