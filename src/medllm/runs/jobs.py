"""What a run dir says about its run: the settings it was given (``.hydra/``), its summary, its failure.

A sweep's summary reads every job dir of the sweep this way (``medllm.sweeps``), and an evaluation reads the
run that trained an adapter (its validation loss, learning rate and rank) the same way.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from medllm.runs.layout import HYDRA_DIR, RunDir

ERROR_NAME = "error.txt"  # in a job dir: the exception the job raised


@dataclass
class JobResult:
    """One run (a job of a sweep, or a single run). status: ok (summary.json written) | failed (raised) |
    incomplete (neither: still running, killed, or exited)."""

    job: int | None
    run_dir: str
    status: str
    lr: float | None = None
    r: int | None = None
    alpha: float | None = None
    val_loss: float | None = None
    tokens_per_s: float | None = None
    peak_mem_gib: float | None = None
    steps: int | None = None
    overrides: list[str] = field(default_factory=list)
    error: str | None = None
    # The numbers in the job's summary.json, by name (what an optimized_metric names).
    metrics: dict[str, float] = field(default_factory=dict)
    # The job's value of every key it was given on the command line (swept or not), by dotted key.
    given: dict[str, Any] = field(default_factory=dict)

    @property
    def command(self) -> str:
        return " ".join(["python", "train.py", *(shlex.quote(o) for o in self.overrides)])


def load_yaml(path: Path) -> Any:
    try:
        return OmegaConf.load(path)
    except Exception:  # a half-written or hand-edited file: leave its fields empty
        return None


def _select(cfg: Any, key: str) -> Any:
    if cfg is None:
        return None
    try:
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
    except Exception:
        return None
    return value if isinstance(value, (int, float, str)) or value is None else str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def read_job(job_dir: Path) -> JobResult:
    """What one job dir says about its job; missing pieces stay None."""
    job_dir = Path(job_dir)
    hydra_dir = job_dir / HYDRA_DIR
    num = _select(load_yaml(hydra_dir / "hydra.yaml"), "hydra.job.num")
    if not isinstance(num, int):
        num = int(job_dir.name) if job_dir.name.isdigit() else None
    overrides = load_yaml(hydra_dir / "overrides.yaml")
    overrides = [str(o) for o in overrides] if overrides is not None else []
    cfg = load_yaml(hydra_dir / "config.yaml")
    given = {}
    for key, text in (split_override(o) for o in overrides):
        value = _select(cfg, key)  # the job's typed value (a number stays a number); a group: its name
        given[key] = value if value is not None and not str(value).startswith("{") else text
    result = JobResult(
        job=num,
        run_dir=str(job_dir),
        status="incomplete",
        lr=_number(_select(cfg, "optimizer.lr")),
        r=_number(_select(cfg, "model.lora.r")),
        alpha=_number(_select(cfg, "model.lora.alpha")),
        overrides=overrides,
        given=given,
    )
    error_path = job_dir / ERROR_NAME
    run = RunDir(job_dir)
    if run.summary_file.is_file():
        try:
            summary = run.read_summary()
        except (OSError, ValueError) as err:
            result.error = f"unreadable summary.json: {err}"
        else:
            result.status = "ok"
            result.val_loss = _number(summary.get("val_loss"))
            result.tokens_per_s = _number(summary.get("tokens_per_s"))
            result.peak_mem_gib = _number(summary.get("peak_mem_gib"))
            result.steps = summary.get("steps")
            result.metrics = {k: v for k, v in summary.items() if _number(v) is not None}
    elif error_path.is_file():
        result.status = "failed"
        result.error = error_path.read_text().strip()
    return result


def split_override(override: str) -> tuple[str, str]:
    """``+key=value`` / ``++key=value`` / ``key=value`` -> (key, value); ``~key`` -> (key, "")."""
    key, _, value = override.lstrip("~+").partition("=")
    return key, value
