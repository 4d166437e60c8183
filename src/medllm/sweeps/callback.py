"""The Hydra callback that keeps a sweep's summary.csv, val_loss.png and best.json up to date.

It rebuilds them after every job as well as at the end: Hydra skips ``on_multirun_end`` when a job
raised, and a sweep cut short (a killed SLURM job, Ctrl-C) still leaves the summary of the jobs done.
A job that raised gets an ``error.txt`` in its dir. Imports stay light (no torch, transformers or peft):
Hydra instantiates callbacks before train.py picks the backend; importing medllm.config registers the
resolvers a SLURM worker needs when it unpickles this callback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from medllm.config.secrets import redact_text
from medllm.runs.jobs import ERROR_NAME
from medllm.sweeps.summary import write_summary

log = logging.getLogger(__name__)


def _is_multirun(config: DictConfig) -> bool:
    return OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN


def _sweep_dir_of_job(config: DictConfig) -> Path:
    """The sweep dir, from the job's (absolute) output dir less its subdir: right on a remote worker too."""
    job_dir = Path(str(config.hydra.runtime.output_dir))
    depth = len(Path(str(config.hydra.sweep.subdir)).parts)
    if 0 < depth <= len(job_dir.parents):
        return job_dir.parents[depth - 1]
    return Path(str(config.hydra.sweep.dir)).absolute()


class SweepSummary(Callback):
    """Hydra callback: keep the sweep's summary.csv, val_loss.png and best.json up to date."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra creates the sweep dir at the first launch, but the Optuna sweeper opens its study's sqlite file
        # there (hparams_search=optuna) before that: the dir must exist when the sweeper starts.
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        try:
            if job_return.status == JobStatus.FAILED:
                err = job_return._return_value
                message = redact_text(f"{type(err).__name__}: {err}".strip())  # a URL's password, a token
                (Path(str(config.hydra.runtime.output_dir)) / ERROR_NAME).write_text(message + "\n")
            write_summary(_sweep_dir_of_job(config))
        except Exception:  # the summary must never stop the remaining jobs
            log.exception("could not update the sweep summary")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            write_summary(Path(str(config.hydra.sweep.dir)), announce=True)
        except Exception:
            log.exception("could not write the sweep summary")
