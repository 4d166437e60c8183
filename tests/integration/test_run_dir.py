"""Never lose a run: a run dir that holds a run is resumed or refused, never overwritten; no secret is
written or printed. Real train.py runs into real dirs, compared byte by byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medllm.runs.layout import RunDir
from tests.helpers.cli import snapshot, train_py
from tests.helpers.configs import ROOT
from tests.helpers.runs import HOLD_LOCK

pytestmark = pytest.mark.slow

KEY_SECRET = "s3cr3t-hub-value"  # under a secret-looking key
TOKEN_SECRET = "hf_" + "Q" * 30  # a known token format inside an ordinary field
SMOKE = ("experiment=smoke", "trainer.max_steps=4", "callbacks.checkpoint.every_n_train_steps=2")


FINISHED_RUN = (*SMOKE, f"+data.hub_token={KEY_SECRET}", f"data.instruction='see {TOKEN_SECRET}'")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished")
    out = train_py(*FINISHED_RUN, f"hydra.run.dir={run_dir}")
    return run_dir, out.stdout + out.stderr


def test_the_run_left_its_files(finished_run):
    run_dir, _ = finished_run
    files = snapshot(run_dir)
    for name in (
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "summary.json",
        "checkpoints/last.ckpt",
        "csv/metrics.csv",
    ):
        assert name in files


@pytest.mark.parametrize(
    "overrides",
    [
        (),  # the same command again
        ("trainer.max_steps=2",),  # another run
        ("ckpt_path={run_dir}/checkpoints/last.ckpt",),  # an explicit resume of a finished run
        ("data=local", "data.path=/no/such/rows.jsonl"),  # a run that fails at start
    ],
    ids=["same", "other", "explicit-ckpt", "fails-at-start"],
)
def test_a_second_run_into_a_finished_run_dir_is_refused_and_changes_no_byte(finished_run, overrides):
    run_dir, _ = finished_run
    before = snapshot(run_dir)
    out = train_py(*SMOKE, f"hydra.run.dir={run_dir}", *(o.format(run_dir=run_dir) for o in overrides), check=False)
    assert out.returncode != 0
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {run_dir} holds a finished run") and "hydra.run.dir" in error
    assert "Traceback" not in out.stderr
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("key", ["paths.output_dir", "logger.save_dir"])
def test_results_redirected_into_a_finished_run_are_refused_and_change_no_byte(finished_run, tmp_path, key):
    """A new run dir whose adapter/summary (paths.output_dir) or metrics (logger.save_dir) would land in
    another run's folder, its checkpoints sent elsewhere."""
    run_dir, _ = finished_run
    before = snapshot(run_dir)
    redirect = (f"{key}={run_dir}", f"callbacks.checkpoint.dirpath={tmp_path / 'checkpoints'}")
    out = train_py(*SMOKE, f"hydra.run.dir={tmp_path / 'new'}", *redirect, "optimizer.lr=0.05", check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {run_dir} holds a finished run")
    assert f"choose another {key}" in out.stderr
    assert snapshot(run_dir) == before


def train_while_locked(folder, *overrides: str) -> subprocess.CompletedProcess:
    """train.py with ``overrides`` while another process holds the lock of ``folder`` (made here)."""
    folder.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        return train_py(*SMOKE, *overrides, check=False)
    finally:
        holder.kill()
        holder.wait()


def test_a_run_dir_another_process_is_writing_into_is_refused(tmp_path):
    """Two commands into one dir: the second, started while the first holds the dir, writes nothing."""
    run_dir = tmp_path / "run"
    out = train_while_locked(run_dir, f"hydra.run.dir={run_dir}")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {run_dir} is in use: another train.py")
    assert RunDir(run_dir).traces() == []


def test_a_checkpoint_folder_another_run_is_writing_into_is_refused(tmp_path):
    """Two runs given one callbacks.checkpoint.dirpath at once would write over each other's last.ckpt; the
    second is refused even before the first has saved a checkpoint there."""
    shared = tmp_path / "checkpoints"
    out = train_while_locked(shared, f"hydra.run.dir={tmp_path / 'b'}", f"callbacks.checkpoint.dirpath={shared}")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {shared} is in use: another train.py")
    assert list(shared.iterdir()) == [] and RunDir(tmp_path / "b").traces() == []


def test_ckpt_path_auto_on_a_finished_run_says_so_and_changes_no_byte(finished_run):
    run_dir, _ = finished_run
    before = snapshot(run_dir)
    out = train_py(*FINISHED_RUN, f"hydra.run.dir={run_dir}", "ckpt_path=auto")
    assert "finished already" in out.stdout + out.stderr
    assert snapshot(run_dir) == before
    # Other settings (a resumed sweep's job with new values) never get the old run's summary as theirs.
    out = train_py(*FINISHED_RUN, f"hydra.run.dir={run_dir}", "ckpt_path=auto", "optimizer.lr=0.5", check=False)
    assert out.returncode != 0 and "holds a finished run of other settings (optimizer.lr: " in out.stderr
    assert snapshot(run_dir) == before


def test_ckpt_path_auto_on_a_finished_run_of_a_relative_data_path_says_so(tmp_path):
    """The record names the file absolute (as the folder the run started in resolves it), and so does the
    command run again with ckpt_path=auto before it is compared: the same run, finished."""
    from medllm.data.records import sample_rows

    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(sample_rows()))
    local = ("data=local", f"data.path={os.path.relpath(rows, ROOT)}")  # train_py runs from the repository root
    train_py(*SMOKE, *local, f"hydra.run.dir={tmp_path / 'run'}")
    out = train_py(*SMOKE, *local, f"hydra.run.dir={tmp_path / 'run'}", "ckpt_path=auto")
    assert "finished already" in out.stdout + out.stderr


def test_no_file_of_the_run_holds_its_secrets_and_none_is_printed(finished_run):
    run_dir, output = finished_run
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert KEY_SECRET.encode() not in data and TOKEN_SECRET.encode() not in data, path
    assert KEY_SECRET not in output and TOKEN_SECRET not in output
    # Redacted, not dropped: the files still say which override was given.
    assert "+data.hub_token=<redacted>" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "hub_token: <redacted>" in (run_dir / ".hydra" / "config.yaml").read_text()


def test_a_sweep_keeps_no_secret_and_a_second_sweep_into_its_dir_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        "-m",
        *SMOKE,
        "trainer.max_steps=1",
        "seed=1,2",
        f"hydra.sweep.dir={sweep}",
        f"+data.hub_token={KEY_SECRET}",
    ]
    first = train_py(*command)
    assert (sweep / "0" / "summary.json").is_file() and (sweep / "1" / "summary.json").is_file()
    # Hydra's sweeper writes multirun.yaml and logs each job's overrides: neither keeps the secret.
    assert "+data.hub_token=<redacted>" in (sweep / "multirun.yaml").read_text()
    assert KEY_SECRET not in first.stdout + first.stderr
    assert not [p for p in sweep.rglob("*") if p.is_file() and KEY_SECRET.encode() in p.read_bytes()]
    before = snapshot(sweep)
    again = train_py(*command, check=False)
    assert again.returncode != 0
    assert again.stderr.strip().splitlines()[-1].startswith(f"error: {sweep} already holds a sweep")
    assert snapshot(sweep) == before


def test_a_run_that_stopped_before_training_leaves_its_dir_free_for_the_corrected_command(tmp_path):
    """A typo or a bad row stops the run before it trains: the same command, corrected, runs in the same dir."""
    run_dir = tmp_path / "run"
    out = train_py(
        *SMOKE, f"hydra.run.dir={run_dir}", "data=local", f"data.path={tmp_path / 'missing.jsonl'}", check=False
    )
    assert out.returncode != 0 and "missing.jsonl" in out.stderr
    assert RunDir(run_dir).traces() == [".hydra"]  # the failed command's config, nothing trained
    train_py(*SMOKE, f"hydra.run.dir={run_dir}")
    assert (run_dir / "summary.json").is_file()
    assert "missing.jsonl" not in (run_dir / ".hydra" / "config.yaml").read_text()  # the run's own config
    assert not (run_dir / ".hydra" / "resume-1").exists()
