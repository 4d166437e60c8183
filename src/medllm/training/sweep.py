"""The summary of a hyperparameter sweep: a table, a plot and the best job, in the sweep dir.

    python train.py -m experiment=qlora_r16 hparams_search=lr_rank_grid   # adds the callback below
    python -m medllm.training.sweep multirun/2026-07-01/12-00-00          # rebuild it by hand

``SweepSummary`` (a Hydra callback) reads every job dir of the sweep (``.hydra/`` and ``summary.json``)
and writes into the sweep dir:

* ``summary.csv``: one row per job (job, status, lr, r, alpha, a column for each other swept key,
  val_loss, tokens_per_s, peak_mem_gib, steps, run_dir, overrides, error);
* ``val_loss.png``: validation loss against each swept key, one panel a key (log axis for a learning
  rate or any positive key spanning 10x or more);
* ``best.json``: the best job, the command that reruns it, and the jobs that failed or left no summary.
  Best: the lowest validation loss; in a sweep with an ``optimized_metric`` (hparams_search=optuna), the
  best value of that summary entry in the sweeper's direction (minimize or maximize).

It rebuilds them after every job as well as at the end: Hydra skips ``on_multirun_end`` when a job
raised, and a sweep cut short (a killed SLURM job, Ctrl-C) still leaves the summary of the jobs done.
A job that raised gets an ``error.txt`` in its dir; failed and unfinished jobs are listed, never fatal.

Imports stay light (no torch, transformers or peft): Hydra instantiates callbacks before train.py
picks the backend, and Unsloth must be imported before transformers and peft.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from medllm import resolvers
from medllm.training.secrets import redact_text

# Job configs hold ${medllm.mul:...}; a remote (submitit) worker imports this module when it unpickles
# the callback, so registering here also covers jobs that never import train.py.
resolvers.register()

log = logging.getLogger(__name__)

CSV_NAME = "summary.csv"
PLOT_NAME = "val_loss.png"
BEST_NAME = "best.json"
ERROR_NAME = "error.txt"  # in a job dir: the exception the job raised
# What trained the adapter, a column in every summary (evaluation reads them too): these keys, when swept,
# have no column of their own.
ADAPTER_KEYS = {"optimizer.lr": "lr", "model.lora.r": "r", "model.lora.alpha": "alpha"}
LEADING = ("job", "status", "lr", "r", "alpha")
TRAILING = ("val_loss", "tokens_per_s", "peak_mem_gib", "steps", "run_dir", "overrides", "error")
COLUMNS = LEADING + TRAILING  # the columns of a sweep whose swept keys are all ADAPTER_KEYS


@dataclass
class JobResult:
    """One job of the sweep. status: ok (summary.json written) | failed (raised) | incomplete (neither:
    still running, killed, or exited)."""

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

    def csv_row(self, swept: list[str], metric: str = "val_loss") -> dict[str, Any]:
        row = {metric: self.metrics.get(metric), **asdict(self), **{key: self.given.get(key) for key in swept}}
        row["overrides"] = " ".join(self.overrides)
        return {k: ("" if row[k] is None else row[k]) for k in columns(swept, metric)}


# ---- reading the sweep ------------------------------------------------------------------------------
def _load_yaml(path: Path) -> Any:
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


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job dirs under a sweep dir: every dir with a ``.hydra/overrides.yaml``."""
    found = {p.parent.parent for p in Path(sweep_dir).rglob("overrides.yaml") if p.parent.name == ".hydra"}
    return sorted(found)


def read_job(job_dir: Path) -> JobResult:
    """What one job dir says about its job; missing pieces stay None."""
    job_dir = Path(job_dir)
    hydra_dir = job_dir / ".hydra"
    num = _select(_load_yaml(hydra_dir / "hydra.yaml"), "hydra.job.num")
    if not isinstance(num, int):
        num = int(job_dir.name) if job_dir.name.isdigit() else None
    overrides = _load_yaml(hydra_dir / "overrides.yaml")
    overrides = [str(o) for o in overrides] if overrides is not None else []
    cfg = _load_yaml(hydra_dir / "config.yaml")
    given = {}
    for key, text in (_split_override(o) for o in overrides):
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
    summary_path = job_dir / "summary.json"
    error_path = job_dir / ERROR_NAME
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
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


def _split_override(override: str) -> tuple[str, str]:
    """``+key=value`` / ``++key=value`` / ``key=value`` -> (key, value); ``~key`` -> (key, "")."""
    key, _, value = override.lstrip("~+").partition("=")
    return key, value


def _sweep_setting(sweep_dir: Path, key: str, results: list[JobResult]) -> Any:
    """A setting of the whole sweep: from multirun.yaml (Hydra's basic sweeper writes it), else from a job's
    .hydra/ files (the Optuna sweeper writes no multirun.yaml); None when none of them holds it."""
    files = [Path(sweep_dir) / "multirun.yaml"]
    files += [Path(r.run_dir) / ".hydra" / name for r in results[:1] for name in ("hydra.yaml", "config.yaml")]
    for path in files:
        value = _select_node(_load_yaml(path), key) if path.is_file() else None
        if value is not None:
            return value
    return None


def swept_keys(results: list[JobResult], sweep_dir: Path | None = None) -> list[str]:
    """The keys the sweep varied: those given different values by its jobs, and those its sweeper searched
    (``hydra.sweeper.params``: a sweep of one job so far still names them), in the order the jobs give them."""
    values: dict[str, set[str]] = {}
    for r in results:
        for key, text in (_split_override(o) for o in r.overrides):
            values.setdefault(key, set()).add(text)
    searched = set()
    if sweep_dir is not None:
        searched = set(_sweep_setting(sweep_dir, "hydra.sweeper.params", results) or ())
    return [key for key, seen in values.items() if len(seen) > 1 or key in searched]


def _select_node(cfg: Any, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key) if cfg is not None else None
    except Exception:
        return None


@dataclass(frozen=True)
class Objective:
    """What makes a job the best: a summary entry and whether lower or higher is better."""

    metric: str = "val_loss"
    maximize: bool = False


def objective(sweep_dir: Path, results: list[JobResult]) -> Objective:
    """The sweep's ``optimized_metric`` and its sweeper's direction; the lowest val_loss without them."""
    metric = _sweep_setting(sweep_dir, "optimized_metric", results) or "val_loss"
    direction = str(_sweep_setting(sweep_dir, "hydra.sweeper.direction", results) or "minimize")
    return Objective(str(metric), direction.endswith("maximize"))  # an Enum reads Direction.maximize


def columns(swept: list[str], metric: str = "val_loss") -> tuple[str, ...]:
    extra = (metric,) if metric not in TRAILING else ()
    return LEADING + tuple(k for k in swept if k not in ADAPTER_KEYS) + extra + TRAILING


def collect(sweep_dir: Path) -> list[JobResult]:
    results = [read_job(d) for d in job_dirs(sweep_dir)]
    return sorted(results, key=lambda r: (r.job is None, r.job if r.job is not None else 0, r.run_dir))


def best_job(results: list[JobResult], goal: Objective = Objective()) -> JobResult | None:
    finished = [r for r in results if r.status == "ok" and goal.metric in r.metrics]
    if not finished:
        return None
    pick = max if goal.maximize else min
    return pick(finished, key=lambda r: r.metrics[goal.metric])


# ---- writing the summary ----------------------------------------------------------------------------
def _replace_atomically(path: Path, write) -> None:
    """Write through a temporary file: readers (and parallel SLURM jobs) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(results: list[JobResult], path: Path, swept: list[str], metric: str = "val_loss") -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns(swept, metric))
            writer.writeheader()
            writer.writerows(r.csv_row(swept, metric) for r in results)

    _replace_atomically(path, write)


def _log_axis(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and v > 0 for v in values) and max(values) >= 10 * min(values)


def plot_val_loss(
    results: list[JobResult], path: Path, swept: list[str], title: str = "", goal: Objective = Objective()
) -> bool:
    """The sweep's metric (validation loss unless optimized_metric names another) against each swept key (one
    panel a key), the best job starred; False when nothing to plot."""
    points = [r for r in results if r.metrics.get(goal.metric) is not None]
    if not points or not swept:
        return False
    from matplotlib.figure import Figure  # no pyplot: no global backend, no display needed

    fig = Figure(figsize=(4.4 * len(swept), 4.2), layout="constrained")
    best = best_job(points, goal)
    for ax, key in zip(fig.subplots(1, len(swept), squeeze=False)[0], swept):
        rows = [r for r in points if r.given.get(key) is not None]
        xs = [r.given[key] for r in rows]
        if not all(isinstance(x, (int, float)) for x in xs):
            xs = [str(x) for x in xs]  # a group choice or a string: one category each
        ax.scatter(xs, [r.metrics[goal.metric] for r in rows], marker="o")
        if best is not None and best in rows:
            x = best.given[key] if not isinstance(xs[0], str) else str(best.given[key])
            ax.scatter(
                [x],
                [best.metrics[goal.metric]],
                s=180,
                marker="*",
                color="black",
                zorder=3,
                label=f"best: job {best.job}",
            )
            ax.legend(fontsize=8)
        if xs and _log_axis(xs):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("validation loss" if goal.metric == "val_loss" else goal.metric)
        ax.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    _replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return True


def write_summary(sweep_dir: str | Path, *, announce: bool = False) -> JobResult | None:
    """Write summary.csv, val_loss.png and best.json into the sweep dir; return the best job."""
    sweep_dir = Path(sweep_dir)
    results = collect(sweep_dir)
    swept = swept_keys(results, sweep_dir)
    goal = objective(sweep_dir, results)
    write_csv(results, sweep_dir / CSV_NAME, swept, goal.metric)
    if not plot_val_loss(results, sweep_dir / PLOT_NAME, swept, title=str(sweep_dir), goal=goal):
        (sweep_dir / PLOT_NAME).unlink(missing_ok=True)
    not_ok = [r for r in results if r.status != "ok"]
    best = best_job(results, goal)
    best_path = sweep_dir / BEST_NAME
    if best is None:
        best_path.unlink(missing_ok=True)
    else:
        best_info = {
            **{k: v for k, v in asdict(best).items() if k not in ("status", "error", "given", "metrics")},
            "optimized_metric": goal.metric,
            "direction": "maximize" if goal.maximize else "minimize",
            goal.metric: best.metrics[goal.metric],
            "swept": {key: best.given.get(key) for key in swept},
            "command": best.command,
            "sweep_dir": str(sweep_dir),
            "jobs": len(results),
            "jobs_ok": len(results) - len(not_ok),
            "failed_jobs": [{"job": r.job, "status": r.status, "run_dir": r.run_dir, "error": r.error} for r in not_ok],
        }
        _replace_atomically(best_path, lambda tmp: tmp.write_text(json.dumps(best_info, indent=2)))
    level = logging.INFO if announce else logging.DEBUG
    log.log(
        level,
        "sweep %s: %d job(s), %d ok; summary in %s",
        sweep_dir,
        len(results),
        len(results) - len(not_ok),
        sweep_dir / CSV_NAME,
    )
    for r in not_ok:
        log.log(
            logging.WARNING if announce else logging.DEBUG,
            "job %s %s: %s (%s)",
            r.job,
            r.status,
            r.error or "no summary.json",
            r.run_dir,
        )
    if best is not None:
        log.log(
            level,
            "best: job %s, %s %.4g, lr %s, r %s, alpha %s: %s",
            best.job,
            goal.metric,
            best.metrics[goal.metric],
            best.lr,
            best.r,
            best.alpha,
            best.run_dir,
        )
    elif announce:
        log.error("sweep %s: no job finished with a %s", sweep_dir, goal.metric)
    return best


# ---- the Hydra callback -----------------------------------------------------------------------------
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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m medllm.training.sweep SWEEP_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not Path(args[0]).is_dir():
        print(f"error: {args[0]} is not a directory", file=sys.stderr)
        return 1
    write_summary(args[0], announce=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
