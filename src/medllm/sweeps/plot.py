"""The sweep's plot: its metric against each swept key, the best job starred."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.runs.atomic import write_atomically

if TYPE_CHECKING:
    from medllm.runs.jobs import JobResult


def _log_axis(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and v > 0 for v in values) and max(values) >= 10 * min(values)


def plot_val_loss(
    results: list[JobResult],
    path: Path,
    swept: list[str],
    title: str = "",
    metric: str = "val_loss",
    best: JobResult | None = None,
) -> bool:
    """The sweep's ``metric`` (validation loss unless optimized_metric names another) against each swept key (one
    panel a key), the ``best`` job starred; False when nothing to plot."""
    points = [r for r in results if r.metrics.get(metric) is not None]
    if not points or not swept:
        return False
    from matplotlib.figure import Figure  # no pyplot: no global backend, no display needed

    fig = Figure(figsize=(4.4 * len(swept), 4.2), layout="constrained")
    for ax, key in zip(fig.subplots(1, len(swept), squeeze=False)[0], swept):
        rows = [r for r in points if r.given.get(key) is not None]
        xs = [r.given[key] for r in rows]
        if not all(isinstance(x, (int, float)) for x in xs):
            xs = [str(x) for x in xs]  # a group choice or a string: one category each
        ax.scatter(xs, [r.metrics[metric] for r in rows], marker="o")
        if best is not None and best in rows:
            x = best.given[key] if not isinstance(xs[0], str) else str(best.given[key])
            ax.scatter(
                [x],
                [best.metrics[metric]],
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
        ax.set_ylabel("validation loss" if metric == "val_loss" else metric)
        ax.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return True
