"""The ``.hydra/`` copy of a job's config that medllm writes itself, with secrets redacted.

Hydra writes ``.hydra/{config,hydra,overrides}.yaml`` inside ``run_job``, before the task function runs,
with the command line's overrides in plain text, and over whatever folder ``hydra.run.dir`` names. So
train.yaml and eval.yaml turn Hydra's own writing off (``hydra.output_subdir: null``) and the guards
(``medllm.runs.guards``) write the same three files here once the folder is found free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medllm.config.secrets import redact_argv, redact_log_records, redact_secrets, remember_secrets
from medllm.runs.atomic import write_atomically
from medllm.runs.layout import FRESH, HYDRA_DIR, RESUME


def guard_secrets(config: DictConfig) -> None:
    """Treat the command line's secret values as secrets from now on, in every log record too."""
    remember_secrets([str(o) for o in config.hydra.overrides.task])
    redact_log_records()


def _yaml(container: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(redact_secrets(container)))


def hydra_files_dir(run_dir: Path, action: str = RESUME) -> Path:
    """``.hydra``, or for a resume (the original files kept) the first free ``.hydra/resume-<n>``. A fresh
    run replaces the ``.hydra`` of a command that stopped before training."""
    hydra_dir = run_dir / HYDRA_DIR
    if action == FRESH or not (hydra_dir / "config.yaml").exists():
        return hydra_dir
    n = 1
    while (hydra_dir / f"resume-{n}").exists():
        n += 1
    return hydra_dir / f"resume-{n}"


def write_hydra_files(config: DictConfig, target: Path) -> None:
    """What Hydra writes to ``.hydra/`` (the job's config unresolved, Hydra's config, the overrides), with
    secrets redacted."""
    task = OmegaConf.to_container(config, resolve=False)
    hydra = task.pop("hydra")
    # Key-based redaction misses a short secret inside these strings: redact them as command lines.
    hydra["overrides"] = {name: redact_argv([str(o) for o in args]) for name, args in hydra["overrides"].items()}
    hydra["job"]["override_dirname"] = ",".join(redact_argv(str(config.hydra.job.override_dirname).split(",")))
    overrides = hydra["overrides"]["task"]
    write_atomically(target / "config.yaml", _yaml(task))
    write_atomically(target / "hydra.yaml", _yaml({"hydra": hydra}))
    write_atomically(target / "overrides.yaml", _yaml(overrides))


def redact_file(path: Path) -> None:
    """A YAML file another writer left with secrets in it (the sweeper's multirun.yaml), rewritten without."""
    write_atomically(path, _yaml(OmegaConf.to_container(OmegaConf.load(path))))
