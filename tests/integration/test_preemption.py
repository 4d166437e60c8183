"""Preemption: a stop signal saves a checkpoint and exits; resumed, the run ends as an uninterrupted one.

Real signals, sent to the process that trains (train.py's command line run in this process: see
tests/helpers/cli.py) once it has logged a few optimizer steps. Under SLURM only the requeue command is faked:
a ``scontrol`` first on PATH that records its arguments; the "requeued job" is the same command run again
with SLURM's variables of a requeued job (same job id, SLURM_RESTART_COUNT=1).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
from safetensors.torch import load_file

from medllm.training.resume import find_checkpoint
from tests.helpers.cli import train_py
from tests.helpers.configs import compose_train
from tests.helpers.runs import RESUMABLE, train_steps

pytestmark = pytest.mark.slow

SLURM_JOB = {  # what srun sets for a one-task job (Lightning then picks its SLURM environment)
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "medllm",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "1",
    "SLURM_NODEID": "0",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
}


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    train_py(*RESUMABLE, f"hydra.run.dir={run_dir}")
    return run_dir


def fake_scontrol(bin_dir, record):
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    script.chmod(0o755)


def signal_mid_training(run_dir, signum: int, *overrides: str) -> subprocess.CompletedProcess:
    """train.py <overrides>, sent ``signum`` once it has logged a few optimizer steps."""
    metrics, stop = run_dir / "csv" / "metrics.csv", threading.Event()
    sent: list[float] = []

    def watch() -> None:
        while not stop.wait(0.02):
            if metrics.is_file() and len(train_steps(run_dir)) >= 4:
                sent.append(time.monotonic())
                os.kill(os.getpid(), signum)
                return

    # Outside training a signal would end the test process: it is noted and dropped there instead (training
    # puts its own handlers in place, and Lightning restores this one when fit ends).
    previous = signal.signal(signum, lambda *_: None)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out = train_py(*overrides, f"hydra.run.dir={run_dir}", check=False)
    finally:
        stop.set()
        watcher.join()
        signal.signal(signum, previous)
    assert sent, "the run ended before the signal: " + out.stderr[-2000:]
    return out


def assert_same_adapter(run_dir, whole_dir) -> None:
    expected = load_file(whole_dir / "adapter" / "adapter_model.safetensors")
    resumed = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == resumed.keys() and expected
    for name, value in expected.items():
        assert (resumed[name] - value).abs().max() <= 1e-6, name


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_saves_a_checkpoint_and_the_resume_ends_as_an_uninterrupted_run(
    whole, tmp_path, signum, monkeypatch
):
    for name in (*SLURM_JOB, "SLURM_RESTART_COUNT", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    run_dir = tmp_path / "run"
    out = signal_mid_training(run_dir, signum, *RESUMABLE)

    assert out.returncode == 1, out.stderr[-2000:]
    last_line = out.stderr.strip().splitlines()[-1]
    checkpoint = find_checkpoint("auto", run_dir / "checkpoints")
    assert 4 <= checkpoint.global_step < 24 and not (run_dir / "summary.json").exists()
    assert last_line == (
        f"stopped by {signal.Signals(signum).name} at step {checkpoint.global_step}; checkpoint saved: "
        f"{run_dir / 'checkpoints' / 'last.ckpt'}. Resume: the same command with ckpt_path=auto "
        f"hydra.run.dir={run_dir}"
    )
    assert checkpoint.path == run_dir / "checkpoints" / "last.ckpt"
    # The checkpoint is the state after a whole optimizer step: nothing of the step in progress is lost.
    assert train_steps(run_dir)[-1] == checkpoint.global_step

    train_py(*RESUMABLE, f"hydra.run.dir={run_dir}", "ckpt_path=auto")
    assert_same_adapter(run_dir, whole)
    assert train_steps(run_dir) == list(range(1, 25))


@pytest.mark.parametrize(
    ("launcher", "signum"),
    [({}, signal.SIGUSR1), ({"SUBMITIT_EXECUTOR": "slurm"}, signal.SIGUSR2)],
    ids=["sbatch-USR1", "submitit-USR2"],
)
def test_slurm_time_limit_signal_saves_requeues_and_the_requeued_job_resumes_by_itself(
    whole, tmp_path, launcher, signum, monkeypatch
):
    run_dir, calls = tmp_path / "run", tmp_path / "scontrol-calls"
    fake_scontrol(tmp_path / "bin", calls)
    for name, value in {**SLURM_JOB, **launcher, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    out = signal_mid_training(run_dir, signum, *RESUMABLE)

    assert out.returncode == 1, out.stderr[-2000:]
    checkpoint = find_checkpoint("auto", run_dir / "checkpoints")
    assert out.stderr.strip().splitlines()[-1] == (
        f"stopped by {signum.name} at step {checkpoint.global_step}; checkpoint saved: {checkpoint.path}. "
        "Requeued SLURM job 4242: it resumes by itself."
    )
    assert calls.read_text().splitlines() == ["requeue 4242"]
    assert not (run_dir / "summary.json").exists()

    # SLURM runs the same batch script again: the same command, the same job id, a restart count.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    requeued = train_py(*RESUMABLE, f"hydra.run.dir={run_dir}")
    chosen = f"ckpt_path=auto: the loadable checkpoint with the most steps is {checkpoint.path}"
    assert chosen in requeued.stdout + requeued.stderr
    assert_same_adapter(run_dir, whole)
    assert calls.read_text().splitlines() == ["requeue 4242"]  # the finished job asked for nothing more


def test_a_slurm_job_writes_to_a_run_dir_named_by_its_job_id_and_resumes_once_requeued(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    cfg = compose_train("experiment=smoke")
    assert str(cfg.hydra.run.dir).startswith("outputs/2") and cfg.ckpt_path is None
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    cfg = compose_train("experiment=smoke")
    assert str(cfg.hydra.run.dir) == "outputs/slurm-77" and cfg.ckpt_path is None  # the job's first run
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert compose_train("experiment=smoke").ckpt_path == "auto"
