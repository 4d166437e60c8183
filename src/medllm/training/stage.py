"""A training stage: what ``train`` builds for one kind of training (its data, model, LightningModule, summary).

``train`` (``medllm.training.fit``) does what every stage shares: the run dir, resuming, the run record, the
Trainer and its loggers and checkpoints, the adapter and the summary. The stage is the config's
(``stage=sft | grpo``, instantiated from its ``_target_``): ``SFT`` here, ``GRPO`` in ``medllm.rl``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from medllm.config.schema import TrainConfig, Trainer
from medllm.config.schema_check import typed
from medllm.models.backends import get_backend
from medllm.models.memory import checkpointing_summary
from medllm.training.callbacks import ThroughputMonitor
from medllm.training.module import AdapterModule, ReasoningSFTModule
from medllm.training.wandb_logging import sample_callbacks


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def trainer_settings(cfg: DictConfig) -> Trainer:
    """``cfg.trainer``, with the schema's defaults for the keys it leaves out."""
    return typed(cfg.trainer, Trainer, "trainer.")


def validation_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The last validation's numbers (``val/...``), as floats."""
    return {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")}


class Stage:
    """The parts of a run that differ between stages; ``train`` calls them in this order."""

    def datamodule(self, cfg: DictConfig, tokenizer: Any) -> L.LightningDataModule:
        """The data module of ``cfg.data`` (``train`` sets it up before any model loads)."""
        return instantiate(cfg.data, tokenizer=tokenizer)

    def load_model(self, cfg: DictConfig, tokenizer: Any) -> Any:
        """The LoRA-wrapped model to train."""
        raise NotImplementedError

    def module(self, cfg: DictConfig, model: Any, datamodule: L.LightningDataModule, tokenizer: Any) -> AdapterModule:
        raise NotImplementedError

    def callbacks(self, cfg: DictConfig, start_step: int) -> list[L.Callback]:
        """The stage's own callbacks (beside the config's checkpointing and progress bar)."""
        return []

    def summary(self, module: AdapterModule, trainer: L.Trainer) -> dict[str, Any]:
        """The stage's numbers in summary.json, after the final validation."""
        return {}


class SFT(Stage):
    """Supervised fine-tuning on reasoning rows (``ReasoningSFTModule``)."""

    def __init__(self) -> None:
        self.throughput: ThroughputMonitor | None = None

    def load_model(self, cfg: DictConfig, tokenizer: Any) -> Any:
        tokens_per_batch = cfg.data.batch_size * cfg.max_seq_length
        return get_backend(cfg.model.backend).load_model(
            cfg.model, tokenizer, seed=cfg.seed, tokens_per_batch=tokens_per_batch
        )

    def module(self, cfg: DictConfig, model: Any, datamodule: L.LightningDataModule, tokenizer: Any) -> AdapterModule:
        settings = trainer_settings(cfg)
        return ReasoningSFTModule(
            model,
            optimizer=instantiate(cfg.optimizer),
            scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
            accumulate_grad_batches=settings.accumulate_grad_batches,
            gradient_clip_val=settings.gradient_clip_val,
            skip_nonfinite_steps=cfg.get("skip_nonfinite_steps", TrainConfig.skip_nonfinite_steps),
        )

    def callbacks(self, cfg: DictConfig, start_step: int) -> list[L.Callback]:
        # Warm-up counted from where this process starts: a resumed run is timed too.
        warmup = cfg.get("throughput_warmup_steps", TrainConfig.throughput_warmup_steps)
        self.throughput = ThroughputMonitor(warmup_steps=start_step + warmup)
        return [self.throughput, *sample_callbacks(cfg.get("logger"))]  # W&B table of generations at validation

    def summary(self, module: AdapterModule, trainer: L.Trainer) -> dict[str, Any]:
        val = validation_metrics(trainer)
        throughput = self.throughput
        return {
            "val_loss": val.get("val/loss"),
            "val_ppl": val.get("val/ppl"),
            "timed_tokens": throughput.timed_tokens,
            "tokens_per_s": finite_or_none(throughput.tokens_per_s),
            "trained_tokens_per_s": finite_or_none(throughput.trained_tokens_per_s),
            "peak_mem_gib": throughput.peak_gib,
            # The estimate behind gradient_checkpointing=auto beside the measured peak (logged too).
            "gradient_checkpointing": checkpointing_summary(module.model.checkpointing_plan, throughput.gpu_peak_gib),
        }
