"""An evaluation's report in W&B (``logger=wandb``): the scores table, the per-item predictions, the budget curve.

One W&B run per evaluation (job type ``eval``), in the logger's project and group, so a sweep's evaluation sits on
its dashboard beside the training runs' losses. The summary holds each model's accuracy per benchmark (and the
suite's averages) under ``eval/<benchmark>/<model>/accuracy``. The mode is decided as for training
(``medllm.runs.wandb_mode``): offline without an API key, nothing sent until ``wandb sync``. wandb is imported only
here, and only when W&B is asked for.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medllm.config.secrets import redact_secrets
from medllm.evaluation.results import EvalResult
from medllm.runs.wandb_mode import redacted_argv, resolve_mode

log = logging.getLogger(__name__)

WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"
TABLE_METRICS = ("n", "accuracy", "macro_f1", "parse_failures", "format_rate", "cut_off_rate", "accuracy_finished",
                 "accuracy_forced", "accuracy_strict", "fallback_answers", "mean_new_tokens")  # fmt: skip
PREDICTION_FIELDS = ("benchmark", "model", "id", "parsed", "gold", "correct", "new_tokens", "cut_off", "output")


def wandb_settings(cfg: DictConfig) -> DictConfig | None:
    """The W&B logger config of an eval config (``logger=wandb``, or the W&B entry of ``logger=many``); None: none."""
    logger = cfg.get("logger")
    if not logger:
        return None
    nodes = [logger] if "_target_" in logger else [n for n in logger.values() if n]
    return next((n for n in nodes if n.get("_target_") == WANDB_TARGET), None)


def log_report(cfg: DictConfig, results: list[EvalResult], extras: dict[str, Any], out_dir: Path) -> None:
    """Start a W&B run, log the report's tables (and budgets.png) and finish it, even where logging fails."""
    settings = wandb_settings(cfg)
    if settings is None:
        return
    import wandb

    mode, why = resolve_mode(settings.get("mode"))
    log.info("W&B: %s (%s)", mode, why)
    config = redact_secrets(OmegaConf.to_container(cfg, resolve=True))
    with redacted_argv():
        run = wandb.init(
            project=settings.get("project"), entity=settings.get("entity"), group=settings.get("group"),
            name=settings.get("name"), tags=list(settings.get("tags") or []), notes=settings.get("notes"),
            dir=str(settings.get("save_dir") or out_dir), mode=mode, job_type="eval", config=config,
            reinit="create_new",
        )  # fmt: skip
    try:
        scores = wandb.Table(columns=["benchmark", "model", *TABLE_METRICS])
        for r in results:
            scores.add_data(r.benchmark, r.model, *(r.metrics.get(key) for key in TABLE_METRICS))
            run.summary[f"eval/{r.benchmark}/{r.model}/accuracy"] = r.metrics.get("accuracy")
        predictions = wandb.Table(columns=list(PREDICTION_FIELDS))
        for r in results:
            for row in r.predictions or []:
                predictions.add_data(*(row.get(key) for key in PREDICTION_FIELDS))
        logged: dict[str, Any] = {"eval/scores": scores, "eval/predictions": predictions}
        for model, average in (extras.get("averages") or {}).items():
            run.summary[f"eval/suite/{model}/macro_accuracy"] = average["macro_accuracy"]
            run.summary[f"eval/suite/{model}/micro_accuracy"] = average["micro_accuracy"]
        curve = extras.get("budgets") or {}
        if curve:
            budgets = wandb.Table(columns=["benchmark", "model", "budget", "accuracy"])
            for bench, models in curve.items():
                for model, points in models.items():
                    for budget, accuracy in points.items():
                        budgets.add_data(bench, model, int(budget), accuracy)
            logged["eval/budgets"] = budgets
            if (out_dir / "budgets.png").is_file():
                logged["eval/budgets_chart"] = wandb.Image(str(out_dir / "budgets.png"))
        run.log(logged)
    finally:
        run.finish()
