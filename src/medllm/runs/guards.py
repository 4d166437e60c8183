"""Hydra callbacks that claim a job's folder before anything of the job touches it.

:class:`RunDirGuard` (train.yaml): ``on_job_start`` runs before the task function, so a run into a folder
that holds another run is stopped before it writes a byte:

* a dir that holds no run: the job starts, and the guard writes ``.hydra/`` with secrets redacted;
* a dir that holds an unfinished run: resumed with ``ckpt_path=auto`` (or a checkpoint inside it), the
  resume's own ``.hydra`` files going to ``.hydra/resume-<n>/`` beside the original ones; otherwise
  refused with a one-line error;
* a dir that holds a finished run (``summary.json``): ``ckpt_path=auto`` says so and changes nothing
  (train.py returns its summary); anything else is refused.

The same holds for every other folder the run writes its results into (``paths.output_dir``, a logger's
``save_dir``, the checkpoint folder) where it is not the run dir, and each is locked while the job runs.
A refused or finished job also detaches Hydra's log file handler for that dir, so not even train.log
grows. Under DDP only rank 0 decides: the other processes run the same command into the same dir,
after rank 0 has written its files, and end with it. A multirun into a sweep dir that already holds
jobs is refused before its first job (unless ``ckpt_path=auto``).

:class:`EvalDirGuard` (eval.yaml): an evaluation into a folder in use, or one that holds an evaluation's
results or a training run, is refused in one line; otherwise the folder is locked and ``.hydra/`` written.

Imports stay light (no torch, transformers or peft): Hydra instantiates callbacks before an entry point
picks its backend, and Unsloth must be imported before transformers and peft. Importing medllm.config
registers the resolvers a SLURM worker needs when it unpickles these callbacks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from medllm.config.resolvers import launched_processes, process_rank
from medllm.runs.hydra_files import guard_secrets, hydra_files_dir, redact_file, write_hydra_files
from medllm.runs.layout import FINISHED, FRESH, RESUME, SUMMARY, RunDir, check_eval_dir, result_dirs
from medllm.runs.locks import claim, detach_file_logs, lock, release_locks


def refuse_file_as_dir(path: Any, key: str) -> None:
    """Exit with one line where the folder Hydra is about to create is a file (Hydra's mkdir would raise)."""
    if Path(str(path)).expanduser().is_file():
        sys.exit(f"error: {key}={path} is a file; give a folder (new, or one to resume in).")


class RunDirGuard(Callback):
    """Refuse to overwrite another run's dir, resume or skip where asked, write ``.hydra/`` without secrets."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        guard_secrets(config)
        refuse_file_as_dir(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        guard_secrets(config)
        refuse_file_as_dir(config.hydra.sweep.dir, "hydra.sweep.dir")
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if config.get("ckpt_path") == "auto" or not sweep_dir.is_dir():
            return
        # Under torchrun every process runs the sweep, and each one's Hydra writes multirun.yaml after this check:
        # there the jobs' traces decide, which no job leaves before all processes meet (its .hydra aside).
        earlier = any(child.is_dir() and RunDir(child).trained_traces() for child in sweep_dir.iterdir())
        if launched_processes() == 1:
            earlier = earlier or (sweep_dir / "multirun.yaml").is_file()
        if earlier:
            sys.exit(
                f"error: {sweep_dir} already holds a sweep; resume its jobs with ckpt_path=auto, or choose another "
                "hydra.sweep.dir."
            )

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        guard_secrets(config)  # again: a SLURM worker runs the job without on_run_start
        run_dir = Path(str(config.hydra.runtime.output_dir))
        sweep_file = Path(str(config.hydra.sweep.dir)) / "multirun.yaml"
        if process_rank() > 0:
            # Rank 0 decides and writes. A finished run's summary.json predates this job, so every rank sees
            # that it must not log into the dir (rank 0 then skips or refuses the run).
            if (run_dir / SUMMARY).is_file():
                detach_file_logs(run_dir)
            return
        if config.hydra.mode == RunMode.MULTIRUN and sweep_file.is_file():
            redact_file(sweep_file)  # Hydra's sweeper wrote it after on_multirun_start, the overrides in plain text
        ckpt_path = config.get("ckpt_path")

        def check() -> str:
            action = RunDir(run_dir).plan(ckpt_path)
            for key, path in result_dirs(config, run_dir).items():
                lock(path)
                RunDir(path).plan(ckpt_path, key)
            return action

        action = claim(run_dir, check)
        if action == FINISHED:
            release_locks()
            detach_file_logs(run_dir)
            return
        write_hydra_files(config, hydra_files_dir(run_dir, action))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        release_locks()


class EvalDirGuard(Callback):
    """Refuse an evaluation into a folder in use or holding results; write ``.hydra/`` without secrets."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        guard_secrets(config)
        refuse_file_as_dir(config.hydra.run.dir, "hydra.run.dir")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        guard_secrets(config)
        run_dir = Path(str(config.hydra.runtime.output_dir))
        resume = bool(config.get("resume"))
        claim(run_dir, lambda: check_eval_dir(run_dir, resume))
        write_hydra_files(config, hydra_files_dir(run_dir, RESUME if resume else FRESH))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        release_locks()
