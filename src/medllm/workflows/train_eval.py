"""train.py's run: training, then the evaluation ``eval_after_training`` asks for, its scores in summary.json.

``eval_after_training`` lists eval.py overrides (``benchmark=pubmedqa``, ``benchmark.path=...``,
``limit=200``, ...). Its config is composed and checked with the training config
(``medllm.config.checks``) and its items read before training (``medllm.workflows.inputs``), so a typo or
a bad file there fails before training, not after it. When training ends, rank 0 scores ``<run>/adapter``
alone (no base) into ``<run>/eval``, taking model, data and prompt from the adapter's run record as
eval.py does, and its numbers join the summary as ``eval_<metric>``: what ``optimized_metric`` may name for
a sweep that should pick adapters by how they answer, not by validation loss.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from medllm.config.checks import eval_after_training_config
from medllm.config.schema import EVAL_METRICS
from medllm.evaluation.evaluate import evaluate
from medllm.evaluation.run_settings import take_run_settings
from medllm.runs.layout import RunDir
from medllm.training.fit import absolute_local_paths, finished_summary, train

log = logging.getLogger(__name__)


def train_and_evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Train (or, for a finished run with ``ckpt_path=auto``, read its summary), then score the adapter where
    ``eval_after_training`` asks; the run's summary."""
    absolute_local_paths(cfg)  # as train() does first: the finished run's record names its files so
    out_dir = Path(cfg.paths.output_dir)
    finished = finished_summary(cfg, out_dir)
    if finished is not None:
        return finished
    summary = train(cfg)
    if not cfg.get("eval_after_training"):
        return summary
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    first = not distributed or torch.distributed.get_rank() == 0
    gc.collect()  # the adapter is saved: the evaluation loads its own model
    torch.cuda.empty_cache()
    # Rank 0 evaluates alone. Every process leaves the DDP group first: inside it, the evaluation's rows and
    # metrics would be split with, and gathered from, processes that have ended.
    if distributed:
        torch.distributed.destroy_process_group()
    if first:
        summary |= evaluate_adapter(cfg, out_dir)
        RunDir(out_dir).write_summary(summary)  # training's numbers were written first
        log.info("evaluation: %s", {k: v for k, v in summary.items() if k.startswith("eval_")})
    return summary


def evaluate_adapter(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Scores ``out_dir/adapter`` as the run was told to; the summary entries ``eval_<metric>``."""
    eval_cfg, overrides = eval_after_training_config(cfg, adapter=RunDir(out_dir).adapter)
    take_run_settings(eval_cfg, overrides)  # model, data and prompt of this run, as eval.py takes them
    log.info("evaluating the adapter: %s", " ".join(cfg.eval_after_training))
    (result,) = evaluate(eval_cfg)  # the adapter's only: include_base=false
    metrics = result.metrics
    return {"eval_benchmark": eval_cfg.benchmark.name} | {
        f"eval_{name}": metrics[name] for name in EVAL_METRICS if metrics.get(name) is not None
    }
