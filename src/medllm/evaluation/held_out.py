"""Held-out loss: an adapter scored on the validation rows its training run held out.

The rows come from the data group, as the run's record describes it, and must be the very rows the run held
out (the split's fingerprint is checked). The loss is the one training validates with
(``medllm.models.causal_lm.HeldOutMetrics``), on the model as trained.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from medllm.evaluation.run_settings import check_held_out
from medllm.models.causal_lm import HeldOutMetrics, causal_lm_forward
from medllm.runs.record import RunRecord
from medllm.tasks.benchmarks import subsample


class HeldOutScorer(L.LightningModule):
    """Validation only: the held-out metrics of ``model`` over a loader's batches."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.held_out = HeldOutMetrics()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.held_out.update(causal_lm_forward(self.model, batch), batch)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.held_out.compute(), logger=False)
        self.held_out.reset()


def val_datamodule(cfg: DictConfig, tokenizer: Any, records: dict[str, RunRecord]) -> Any:
    """The data config's validation split: the training run's, checked against the adapters' run records."""
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    if cfg.benchmark.get("batch_size"):
        datamodule.eval_batch_size = int(cfg.benchmark.batch_size)
    datamodule.setup("fit")
    val = datamodule.splits["val"]
    check_held_out(val, records)
    if cfg.limit is not None:
        datamodule.splits["val"] = val.select(subsample(len(val), cfg.limit, cfg.limit_seed))
    return datamodule


def held_out_metrics(model: Any, datamodule: Any, cfg: DictConfig) -> dict[str, Any]:
    """Token-weighted loss, perplexity and next-token accuracy of ``model`` on the validation split."""
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=cfg.paths.output_dir,
    )
    trainer.validate(HeldOutScorer(model), dataloaders=datamodule.val_dataloader(), verbose=False)
    out = {name: float(value) for name, value in trainer.callback_metrics.items()}
    metrics = {"n": len(datamodule.splits["val"]), "loss": out["val/loss"], "perplexity": out["val/ppl"]}
    if "val/token_accuracy" in out:
        metrics["token_accuracy"] = out["val/token_accuracy"]
    return metrics
