"""Never lose a run: a run killed mid-training and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.helpers.cli import snapshot, train_py
from tests.helpers.runs import RESUMABLE, kill_after_first_checkpoint, train_steps

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> dict[str, Path]:
    """Two runs killed after their first checkpoint: one keeping its checkpoints in its run dir, one in a
    folder of its own (callbacks.checkpoint.dirpath); the processes start together."""
    base = tmp_path_factory.mktemp("killed")
    elsewhere = base / "scratch" / "ckpts"
    kill_after_first_checkpoint(
        {
            "broken": ([*RESUMABLE, f"hydra.run.dir={base / 'broken'}"], base / "broken" / "checkpoints"),
            "run": (
                [*RESUMABLE, f"callbacks.checkpoint.dirpath={elsewhere}", f"hydra.run.dir={base / 'run'}"],
                elsewhere,
            ),
        }
    )
    return {"broken": base / "broken", "run": base / "run", "elsewhere": elsewhere}


def test_killed_run_resumed_with_ckpt_path_auto_equals_an_uninterrupted_run(killed, tmp_path):
    whole, broken = tmp_path / "whole", killed["broken"]
    train_py(*RESUMABLE, f"hydra.run.dir={whole}")
    assert not (broken / "summary.json").exists()  # it really was stopped before the end

    # A new run into the killed run's dir is refused and touches nothing; a resume is what it takes.
    before = snapshot(broken)
    refused = train_py(*RESUMABLE, f"hydra.run.dir={broken}", check=False)
    assert refused.returncode != 0 and "resume it with ckpt_path=auto" in refused.stderr.splitlines()[-1]
    assert snapshot(broken) == before
    original_config = (broken / ".hydra" / "config.yaml").read_bytes()

    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        train_py(*RESUMABLE, f"hydra.run.dir={broken}", "ckpt_path=auto")
    # The earlier rows are kept (below): Lightning's "Previous log files ... will be deleted" would mislead.
    assert not [w for w in warned if "will be deleted" in str(w.message)]
    expected = load_file(whole / "adapter" / "adapter_model.safetensors")
    resumed = load_file(broken / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == resumed.keys() and expected
    for name, value in expected.items():
        assert (resumed[name] - value).abs().max() <= 1e-6, name

    # The run's metrics go on from before the kill: every step once, in order; tokens/s measured.
    assert train_steps(broken) == train_steps(whole) == list(range(1, 25))
    summary, uninterrupted = (json.loads((d / "summary.json").read_text()) for d in (broken, whole))
    assert summary["tokens_per_s"] > 0
    # The summary is the whole run's: its first loss is step 1's, from before the kill.
    for key in ("train_loss_first", "train_loss_last"):
        assert summary[key] == pytest.approx(uninterrupted[key], rel=1e-5), key
    # The original .hydra/ files stay; the resume's own sit beside them.
    assert (broken / ".hydra" / "config.yaml").read_bytes() == original_config
    assert "ckpt_path=auto" in (broken / ".hydra" / "resume-1" / "overrides.yaml").read_text()


def test_resume_from_an_explicit_checkpoint_of_another_run_dir(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train_py(*RESUMABLE, "trainer.max_steps=6", f"hydra.run.dir={first}")
    out = train_py(
        *RESUMABLE, "trainer.max_steps=9", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={second}"
    )
    summary = json.loads((second / "summary.json").read_text())
    assert summary["steps"] == 9, out.stderr[-2000:]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("short")
    train_py(*RESUMABLE, "trainer.max_steps=6", f"hydra.run.dir={run_dir}")
    return run_dir


def test_auto_skips_a_corrupt_newest_checkpoint_for_an_intact_last_ckpt(short_run, tmp_path):
    partial = tmp_path / "partial"
    (partial / "checkpoints").mkdir(parents=True)
    shutil.copy(short_run / "checkpoints" / "last.ckpt", partial / "checkpoints" / "last.ckpt")
    corrupt = partial / "checkpoints" / "step000009.ckpt"
    corrupt.write_bytes((short_run / "checkpoints" / "last.ckpt").read_bytes()[:4096])  # a save cut short
    os.utime(corrupt, (time.time() + 60, time.time() + 60))  # the newest file
    out = train_py(*RESUMABLE, "trainer.max_steps=9", f"hydra.run.dir={partial}", "ckpt_path=auto")
    assert f"skipping {corrupt}: not a readable checkpoint" in out.stdout + out.stderr
    assert json.loads((partial / "summary.json").read_text())["steps"] == 9  # 6 resumed + 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model.lora.r=16",), "holds a LoRA adapter of another shape (model.lora.r: 8 -> 16)"),
        (("model.tiny.seed=1",), "was trained on another base model (model.tiny.seed: 0 -> 1)"),
        (
            ("optimizer.lr=1e-3", "data.batch_size=2"),
            "was trained with other settings (data.batch_size: 4 -> 2; optimizer.lr: 0.01 -> 0.001)",
        ),
    ],
    ids=["lora-rank", "base", "lr-and-batch"],
)
def test_a_checkpoint_that_does_not_fit_the_config_is_named_before_the_model_loads(
    short_run, tmp_path, overrides, message
):
    ckpt = short_run / "checkpoints" / "last.ckpt"
    out = train_py(*RESUMABLE, f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'run'}", *overrides, check=False)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {ckpt} {message}")
    assert "Traceback" not in out.stderr and "Trainable params" not in out.stdout + out.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("kind", ["truncated", "foreign"])
def test_an_unreadable_or_foreign_checkpoint_is_named_in_one_line(short_run, tmp_path, kind):
    import torch

    ckpt = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        ckpt.write_bytes((short_run / "checkpoints" / "last.ckpt").read_bytes()[:4096])
        expected = f"error: {ckpt}: not a readable checkpoint (4096 bytes: truncated"
    else:
        torch.save({"state_dict": {}, "global_step": 3}, ckpt)  # a Lightning-like file of another program
        expected = f"error: {ckpt}: not a medllm checkpoint"
    out = train_py(*RESUMABLE, f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith(expected)
    assert "Traceback" not in out.stderr


def test_checkpoints_kept_outside_the_run_dir_are_resumed_from_and_never_written_over(killed, tmp_path):
    run, elsewhere = killed["run"], killed["elsewhere"]
    overrides = [*RESUMABLE, f"callbacks.checkpoint.dirpath={elsewhere}"]

    # Another run given the same checkpoint folder would write over the killed run's checkpoints: refused.
    kept = snapshot(elsewhere)
    other = train_py(*overrides, f"hydra.run.dir={tmp_path / 'other'}", check=False)
    assert other.returncode != 0 and "holds checkpoints of another run" in other.stderr.splitlines()[-1]
    assert snapshot(elsewhere) == kept
    # So would one that resumes them, from its own run dir: they are the killed run's to resume.
    for resume in ("ckpt_path=auto", f"ckpt_path={next(elsewhere.glob('step*.ckpt'))}"):
        other = train_py(*overrides, f"hydra.run.dir={tmp_path / 'other'}", resume, check=False)
        assert other.returncode != 0
        assert f"holds checkpoints of the run in {run}, which this run would write over" in other.stderr
        assert snapshot(elsewhere) == kept

    train_py(*overrides, f"hydra.run.dir={run}", "ckpt_path=auto")
    assert f"the loadable checkpoint with the most steps is {elsewhere}" in (run / "train.log").read_text()
    assert train_steps(run) == list(range(1, 25))  # resumed from the folder: no step trained twice
    assert (elsewhere / "last.ckpt").is_file() and not (run / "checkpoints").exists()


def test_a_resume_on_rows_edited_since_the_checkpoint_is_refused_before_the_model_loads(tmp_path):
    from medllm.data.records import sample_rows

    rows = sample_rows()
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(rows))
    local = ["data=local", f"data.path={data}"]
    train_py(*RESUMABLE, *local, "trainer.max_steps=6", f"hydra.run.dir={tmp_path / 'first'}")
    rows[3]["Response"] += " Confirm with an ECG."  # same file, same count, same settings: other rows
    data.write_text(json.dumps(rows))
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    out = train_py(*RESUMABLE, *local, f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'second'}", check=False)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {ckpt} was trained on other rows (rows of ")
    assert "Trainable params" not in out.stdout + out.stderr and not (tmp_path / "second" / "checkpoints").exists()
