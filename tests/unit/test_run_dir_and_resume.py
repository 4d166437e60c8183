"""What a run does with a dir that already holds files, which config changes a resume refuses, and log
redaction: fast checks on real dirs, files and log records."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest

from medllm.config import secrets
from medllm.runs.hydra_files import hydra_files_dir
from medllm.runs.layout import FINISHED, FRESH, RESUME, RunDir, RunDirError
from medllm.runs.locks import RunDirInUse, lock, release_locks
from medllm.runs.record import RunRecord
from medllm.training.resume import WORLD_SIZE_KEY, CheckpointError, RecordInCheckpoints, config_changes
from tests.helpers.runs import HOLD_LOCK


def test_a_dir_without_a_run_is_fresh(tmp_path):
    (tmp_path / "train.log").write_text("")  # Hydra creates it for every job, this one too
    (tmp_path / "checkpoints").mkdir()  # empty: nothing to lose
    assert RunDir(tmp_path / "missing").plan(None) == FRESH
    assert RunDir(tmp_path).plan(None) == FRESH
    assert RunDir(tmp_path).plan("auto") == FRESH


def test_an_unfinished_run_is_resumed_only_when_asked(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert RunDir(tmp_path).plan("auto") == RESUME
    assert RunDir(tmp_path).plan(str(tmp_path / "checkpoints" / "last.ckpt")) == RESUME
    with pytest.raises(RunDirError, match=r"already holds a run \(checkpoints\); resume it with ckpt_path=auto"):
        RunDir(tmp_path).plan(None)
    with pytest.raises(RunDirError):
        RunDir(tmp_path).plan(str(tmp_path.parent / "elsewhere.ckpt"))


def test_a_finished_run_is_never_trained_again(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    assert RunDir(tmp_path).plan("auto") == FINISHED
    for ckpt in (None, str(tmp_path / "checkpoints" / "last.ckpt")):
        with pytest.raises(RunDirError, match="holds a finished run"):
            RunDir(tmp_path).plan(ckpt)


def test_a_resume_writes_its_hydra_files_beside_the_original_ones(tmp_path):
    assert hydra_files_dir(tmp_path) == tmp_path / ".hydra"
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 1\n")
    assert hydra_files_dir(tmp_path) == tmp_path / ".hydra" / "resume-1"
    (tmp_path / ".hydra" / "resume-1").mkdir()
    assert hydra_files_dir(tmp_path) == tmp_path / ".hydra" / "resume-2"
    assert hydra_files_dir(tmp_path, FRESH) == tmp_path / ".hydra"  # a failed start's config is replaced


def test_the_working_directory_is_no_secret(monkeypatch, tmp_path):
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.setenv("DB_PWD", "hunter2-long-enough")
    assert str(tmp_path) not in secrets.known_secrets()
    assert secrets.redact_text(f"data.path={tmp_path}/rows.jsonl") == f"data.path={tmp_path}/rows.jsonl"
    assert "hunter2-long-enough" in secrets.known_secrets()  # a *_pwd variable still is one


def test_config_changes_name_what_a_resume_would_not_apply_and_ignore_the_rest():
    old = {
        "seed": 42,
        "optimizer": {"lr": 0.01},
        "data": {"path": "a.jsonl", "num_workers": 0},
        "trainer": {"max_steps": 10, "accumulate_grad_batches": 1},
        "paths": {"output_dir": "/runs/a"},
    }
    new = {
        "seed": 42,
        "optimizer": {"lr": 0.001, "weight_decay": 0.1},
        "data": {"path": "b.jsonl", "num_workers": 4},
        "trainer": {"max_steps": 20, "accumulate_grad_batches": 2},
        "paths": {"output_dir": "/runs/b"},
    }
    assert config_changes(old, new) == [
        "data.path: a.jsonl -> b.jsonl",
        "optimizer.lr: 0.01 -> 0.001",
        "optimizer.weight_decay: (unset) -> 0.1",
        "trainer.accumulate_grad_batches: 1 -> 2",
    ]
    assert config_changes(old, old) == []


def test_log_records_are_redacted_whichever_handler_writes_them(tmp_path, monkeypatch):
    monkeypatch.setattr(secrets, "_remembered", set())
    monkeypatch.setattr(logging, "_logRecordFactory", logging.getLogRecordFactory())  # restored afterwards
    secrets.remember_secrets(["+data.hf_token=abcd1234", "optimizer.lr=1e-4"])
    secrets.redact_log_records()
    secrets.redact_log_records()  # idempotent: one wrapper, not two
    path = tmp_path / "train.log"
    handler = logging.FileHandler(path)
    logger = logging.getLogger("medllm.test_redaction")
    logger.addHandler(handler)
    try:
        logger.warning("overrides: %s", ["+data.hf_token=abcd1234", "optimizer.lr=1e-4"])
        logger.warning("url https://me:pw@host and %s", "hf_" + "Z" * 24)
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = path.read_text()
    assert "abcd1234" not in text and "pw@" not in text and "ZZZZ" not in text
    assert "optimizer.lr=1e-4" in text and text.count(secrets.REDACTED) == 3


def test_a_checkpoint_of_another_number_of_processes_is_refused(tmp_path):
    """The sampler's position counts global batches: resuming 2 processes' run on 1 would skip rows."""
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    record = RecordInCheckpoints(RunRecord())
    saved: dict = {}
    record.on_save_checkpoint(trainer, None, saved)
    record.on_load_checkpoint(trainer, None, saved)  # the same processes: fine
    with pytest.raises(CheckpointError, match=r"trained by 2 process\(es\), this run has 1"):
        record.on_load_checkpoint(trainer, None, {**saved, WORLD_SIZE_KEY: 2})


@pytest.mark.parametrize(
    ("trained_by", "env", "overrides"),
    [(1, {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, ("hardware=ddp_cpu",)), (2, {}, ())],
    ids=["single-then-torchrun", "ddp-then-single"],
)
def test_a_resume_with_another_number_of_processes_is_refused_before_any_model_loads(
    tmp_path, monkeypatch, trained_by, env, overrides
):
    """check_resumable runs before the model loads: the settings say how many processes this run has."""
    from medllm.training.resume import Checkpoint, check_resumable
    from tests.helpers.configs import compose_train

    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = compose_train("experiment=smoke", *overrides, f"paths.output_dir={tmp_path}")
    del cfg.hydra
    path = tmp_path / "last.ckpt"
    for fine in (None, 2 if env else 1):  # not recorded (older checkpoints), or this run's own number
        check_resumable(Checkpoint(path, 3, RunRecord.of_config(cfg), world_size=fine), cfg)
    with pytest.raises(CheckpointError, match=rf"{path}: the checkpoint was trained by {trained_by} process\(es\)"):
        check_resumable(Checkpoint(path, 3, RunRecord.of_config(cfg), world_size=trained_by), cfg)


def test_auto_takes_the_checkpoint_with_the_most_steps_not_the_newest_file(tmp_path):
    """A copied run dir may not keep file times: the steps inside the checkpoints decide."""
    import os

    import torch

    from medllm.runs.record import RECORD_FORMAT
    from medllm.training.resume import RECORD_KEY, find_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name, step, mtime in (("last.ckpt", 6, 1_000), ("step000004.ckpt", 4, 2_000), ("step000006.ckpt", 6, 3_000)):
        torch.save({"global_step": step, RECORD_KEY: {"format": RECORD_FORMAT}}, folder / name)
        os.utime(folder / name, (mtime, mtime))
    chosen = find_checkpoint("auto", folder)
    assert (chosen.path.name, chosen.global_step) == ("last.ckpt", 6)  # most steps; last.ckpt among equals


def test_a_checkpoint_folder_outside_the_run_dir_resumes_only_its_own_runs_checkpoints(tmp_path):
    """callbacks.checkpoint.dirpath shared by two runs: the second would write its last.ckpt over the first's."""
    import torch

    from medllm.runs.record import RECORD_FORMAT
    from medllm.training.resume import RECORD_KEY, find_checkpoint

    shared, first, second = tmp_path / "ckpts", tmp_path / "first", tmp_path / "second"
    shared.mkdir()
    record = {"format": RECORD_FORMAT, "config": {"paths": {"output_dir": str(first)}}}
    torch.save({"global_step": 3, RECORD_KEY: record}, shared / "last.ckpt")
    assert find_checkpoint("auto", shared, first).global_step == 3  # its own run resumes it
    for ckpt_path in ("auto", str(shared / "last.ckpt")):
        with pytest.raises(CheckpointError, match=rf"holds checkpoints of the run in {re.escape(str(first))}"):
            find_checkpoint(ckpt_path, shared, second)
    # inside a run dir the checkpoints are that dir's, wherever the run first wrote them (a copied run dir)
    assert find_checkpoint("auto", shared, tmp_path).global_step == 3


def test_a_folder_in_use_by_another_process_is_refused_until_that_process_ends(tmp_path):
    """The lock is the kernel's: held while the other process lives, dropped when it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirInUse, match=rf"^{re.escape(str(tmp_path))} is in use: another train.py"):
            lock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    lock(tmp_path)  # free again once the holder is gone, killed as it was
    release_locks()


def test_relative_paths_of_local_files_are_recorded_as_this_folder_resolves_them(tmp_path, monkeypatch):
    """A record naming "rows.jsonl" or "my-base" would point eval.py, started elsewhere, at other files."""
    from medllm.training.fit import absolute_local_paths
    from tests.helpers.configs import compose_train

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-base").mkdir()
    (tmp_path / "rows.jsonl").write_text("{}\n")
    cfg = compose_train(
        "model.name_or_path=my-base", "data=local", "data.path=rows.jsonl", "data.test_path=not-yet.jsonl"
    )
    absolute_local_paths(cfg)
    assert cfg.model.name_or_path == str(tmp_path / "my-base")
    assert cfg.data.path == str(tmp_path / "rows.jsonl")
    assert cfg.data.test_path == "not-yet.jsonl"  # no such file: left as given, for the check to name
    cfg = compose_train("model.name_or_path=unsloth/DeepSeek-R1-Distill-Llama-8B")
    absolute_local_paths(cfg)
    assert cfg.model.name_or_path == "unsloth/DeepSeek-R1-Distill-Llama-8B"  # a hub id stays one


def test_auto_with_no_checkpoint_to_resume_warns_that_it_starts_fresh(tmp_path, caplog):
    """A mistyped hydra.run.dir with ckpt_path=auto must not retrain from scratch with only an info line."""
    from medllm.training.resume import find_checkpoint

    with caplog.at_level(logging.WARNING):
        assert find_checkpoint("auto", tmp_path / "typo" / "checkpoints") is None
    assert [r.levelno for r in caplog.records if "starting fresh" in r.message] == [logging.WARNING]
