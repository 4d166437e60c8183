"""train.py with gradient_checkpointing=auto under MEDLLM_MEMORY_CAP_GIB: the plan, made on the CPU against
the cap, turns checkpointing on and lands in summary.json with its estimate."""

from __future__ import annotations

import json

import pytest

from medllm.config.inputs import CAP_VARIABLE
from tests.helpers.cli import train_py

pytestmark = pytest.mark.slow


def test_a_cap_below_the_estimate_turns_checkpointing_on_and_the_run_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(CAP_VARIABLE, "0.001")
    train_py(
        "experiment=smoke",
        "model.gradient_checkpointing=auto",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        f"hydra.run.dir={tmp_path}",
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    checkpointing = summary["gradient_checkpointing"]
    assert checkpointing["setting"] is True  # the hf backend's checkpointing
    assert checkpointing["memory_cap_gib"] == 0.001 and checkpointing["free_gib"] == 0.001
    assert 0.001 < checkpointing["estimate_gib"] < 1  # the tiny model, checkpointed
    # A CPU's resident memory is no GPU peak: nothing to compare the estimate with.
    assert checkpointing["peak_mem_gib"] is None and checkpointing["peak_vs_estimate"] is None
    assert summary["steps"] == 4
    log = (tmp_path / "train.log").read_text()
    assert f"capped at 0.001 GiB by {CAP_VARIABLE}) -> True" in log
    assert f"gradient_checkpointing=True: estimated peak {checkpointing['estimate_gib']:.2f} GiB" in log
