"""The summary of a hyperparameter sweep: a table, a plot and the best job, in the sweep dir.

    python train.py -m experiment=qlora_r16 hparams_search=lr_rank_grid   # the callback keeps it up to date
    python -m medllm.sweeps.summary multirun/2026-07-01/12-00-00          # rebuild it by hand

``write_summary`` reads every job dir of the sweep (``.hydra/`` and ``summary.json``, through
``medllm.runs.jobs``) and writes into the sweep dir:

* ``summary.csv``: one row per job (job, status, lr, r, alpha, a column for each other swept key,
  val_loss, tokens_per_s, peak_mem_gib, steps, run_dir, overrides, error);
* ``val_loss.png``: validation loss against each swept key, one panel a key (log axis for a learning
  rate or any positive key spanning 10x or more);
* ``best.json``: the best job, the command that reruns it, and the jobs that failed or left no summary.
  Best: the lowest validation loss; in a sweep with an ``optimized_metric`` (hparams_search=optuna), the
  best value of that summary entry in the sweeper's direction (minimize or maximize).

Failed and unfinished jobs are listed, never fatal (``medllm.sweeps.callback`` runs it after every job).
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from medllm.config.schema import SUMMARY_METRICS
from medllm.runs.atomic import write_atomically
from medllm.runs.jobs import JobResult, load_yaml, read_job, split_override
from medllm.sweeps.plot import plot_val_loss

log = logging.getLogger(__name__)

CSV_NAME = "summary.csv"
PLOT_NAME = "val_loss.png"
BEST_NAME = "best.json"
# What trained the adapter, a column in every summary (evaluation reads them too): these keys, when swept,
# have no column of their own.
ADAPTER_KEYS = {"optimizer.lr": "lr", "model.lora.r": "r", "model.lora.alpha": "alpha"}
LEADING = ("job", "status", "lr", "r", "alpha")
TRAILING = ("val_loss", "tokens_per_s", "peak_mem_gib", "steps", "run_dir", "overrides", "error")
COLUMNS = LEADING + TRAILING  # the columns of a sweep whose swept keys are all ADAPTER_KEYS


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job dirs under a sweep dir: every dir with a ``.hydra/overrides.yaml``."""
    found = {p.parent.parent for p in Path(sweep_dir).rglob("overrides.yaml") if p.parent.name == ".hydra"}
    return sorted(found)


def _sweep_setting(sweep_dir: Path, key: str, results: list[JobResult]) -> Any:
    """A setting of the whole sweep: from multirun.yaml (Hydra's basic sweeper writes it), else from a job's
    .hydra/ files (the Optuna sweeper writes no multirun.yaml); None when none of them holds it."""
    files = [Path(sweep_dir) / "multirun.yaml"]
    files += [Path(r.run_dir) / ".hydra" / name for r in results[:1] for name in ("hydra.yaml", "config.yaml")]
    for path in files:
        value = _select_node(load_yaml(path), key) if path.is_file() else None
        if value is not None:
            return value
    return None


def swept_keys(results: list[JobResult], sweep_dir: Path | None = None) -> list[str]:
    """The keys the sweep varied: those given different values by its jobs, and those its sweeper searched
    (``hydra.sweeper.params``: a sweep of one job so far still names them), in the order the jobs give them."""
    values: dict[str, set[str]] = {}
    for r in results:
        for key, text in (split_override(o) for o in r.overrides):
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
    """The sweep's ``optimized_metric`` and its sweeper's direction (a grid sweep has none: the metric's own, e.g.
    the highest val_accuracy); the lowest val_loss without them."""
    metric = str(_sweep_setting(sweep_dir, "optimized_metric", results) or "val_loss")
    direction = _sweep_setting(sweep_dir, "hydra.sweeper.direction", results)
    if direction is None:
        return Objective(metric, SUMMARY_METRICS.get(metric, False))
    return Objective(metric, str(direction).endswith("maximize"))  # an Enum reads Direction.maximize


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


def csv_row(result: JobResult, swept: list[str], metric: str = "val_loss") -> dict[str, Any]:
    row = {metric: result.metrics.get(metric), **asdict(result), **{key: result.given.get(key) for key in swept}}
    row["overrides"] = " ".join(result.overrides)
    return {k: ("" if row[k] is None else row[k]) for k in columns(swept, metric)}


def write_csv(results: list[JobResult], path: Path, swept: list[str], metric: str = "val_loss") -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns(swept, metric))
            writer.writeheader()
            writer.writerows(csv_row(r, swept, metric) for r in results)

    write_atomically(path, write)


def write_summary(sweep_dir: str | Path, *, announce: bool = False) -> JobResult | None:
    """Write summary.csv, val_loss.png and best.json into the sweep dir; return the best job."""
    sweep_dir = Path(sweep_dir)
    results = collect(sweep_dir)
    swept = swept_keys(results, sweep_dir)
    goal = objective(sweep_dir, results)
    write_csv(results, sweep_dir / CSV_NAME, swept, goal.metric)
    best = best_job(results, goal)
    if not plot_val_loss(results, sweep_dir / PLOT_NAME, swept, str(sweep_dir), goal.metric, best):
        (sweep_dir / PLOT_NAME).unlink(missing_ok=True)
    not_ok = [r for r in results if r.status != "ok"]
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
        write_atomically(best_path, json.dumps(best_info, indent=2))
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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m medllm.sweeps.summary SWEEP_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not Path(args[0]).is_dir():
        print(f"error: {args[0]} is not a directory", file=sys.stderr)
        return 1
    write_summary(args[0], announce=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
