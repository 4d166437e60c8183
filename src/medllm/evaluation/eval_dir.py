"""An evaluation's folder holds one evaluation, and eval.py writes over no training run's files.

eval.yaml turns Hydra's own ``.hydra/`` writing off (``hydra.output_subdir: null``: it would write the
command line's secrets in plain text, into whatever folder ``hydra.run.dir`` names) and registers
:class:`EvalDirGuard`, whose ``on_job_start`` runs before the job touches its dir: a folder another
eval.py or train.py is writing into now, or one that holds an evaluation's results or a training run, is
refused in one line; otherwise the guard holds the folder's lock for the job and writes ``.hydra/`` with
secrets redacted. Imports stay light: no torch, no matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from medllm.training.run_dir import (
    HYDRA_DIR,
    RunDirError,
    claim,
    guard_secrets,
    refuse_file_as_dir,
    release_locks,
    trained_traces,
    write_hydra_files,
)

# What write_report leaves in an evaluation's dir; any of them there means the dir holds an evaluation.
REPORT_FILES = ("report.json", "report.md", "predictions.jsonl", "report.png")
ANSWERS = "answers.jsonl"  # mode=generate's answers


def check_eval_dir(out_dir: Path) -> None:
    """RunDirError where an evaluation into ``out_dir`` would write over another's results or a training run."""
    held = [name for name in (*REPORT_FILES, ANSWERS) if (out_dir / name).exists()]
    if held:
        raise RunDirError(f"{out_dir} holds an evaluation already ({', '.join(held)}); choose another hydra.run.dir.")
    training = trained_traces(out_dir)
    if training:
        raise RunDirError(
            f"{out_dir} holds a training run ({', '.join(training)}); an evaluation goes into a folder of its own: "
            "choose another hydra.run.dir."
        )


class EvalDirGuard(Callback):
    """Hydra callback: refuse an evaluation into a folder in use or holding results; write ``.hydra/``
    without secrets."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        guard_secrets(config)
        refuse_file_as_dir(config.hydra.run.dir, "hydra.run.dir")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        guard_secrets(config)
        run_dir = Path(str(config.hydra.runtime.output_dir))
        claim(run_dir, lambda: check_eval_dir(run_dir))
        write_hydra_files(config, run_dir / HYDRA_DIR)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        release_locks()
