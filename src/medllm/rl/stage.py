"""``stage=grpo``: what a GRPO run builds for ``medllm.training.fit.train`` (see ``medllm.training.stage``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from medllm.config.schema import GRPOStage, TrainConfig
from medllm.config.schema_check import typed
from medllm.rl.data import ProblemDataModule
from medllm.rl.module import GRPOModule
from medllm.rl.policy import load_policy
from medllm.rl.rewards import RewardSet
from medllm.runs.atomic import write_atomically
from medllm.training.callbacks import peak_memory_gib
from medllm.training.stage import Stage, trainer_settings, validation_metrics

log = logging.getLogger(__name__)

COMPLETIONS = "completions.jsonl"


class GRPO(Stage):
    """GRPO on problems with checkable answers (``GRPOModule``); ``settings`` are ``stage``'s keys."""

    def __init__(self, **settings: Any) -> None:
        self.settings = typed(settings, GRPOStage, "stage.")

    def datamodule(self, cfg: DictConfig, tokenizer: Any) -> ProblemDataModule:
        return instantiate(cfg.data, tokenizer=tokenizer, max_completion_length=self.settings.max_completion_length)

    def load_model(self, cfg: DictConfig, tokenizer: Any) -> Any:
        return load_policy(cfg, tokenizer, with_reference=self.settings.beta > 0)

    def module(self, cfg: DictConfig, model: Any, datamodule: ProblemDataModule, tokenizer: Any) -> GRPOModule:
        trainer = trainer_settings(cfg)
        if trainer.accumulate_grad_batches != 1:
            log.warning(
                "trainer.accumulate_grad_batches=%d is ignored by stage=grpo: a step's batch is data.batch_size "
                "prompts x stage.num_generations completions; raise data.batch_size instead",
                trainer.accumulate_grad_batches,
            )
        prompts = [ids for split in datamodule.splits.values() for _, ids in split]
        return GRPOModule(
            model,
            tokenizer,
            self.settings,
            RewardSet.from_config(self.settings.rewards),
            optimizer=instantiate(cfg.optimizer),
            scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
            gradient_clip_val=trainer.gradient_clip_val,
            skip_nonfinite_steps=cfg.get("skip_nonfinite_steps", TrainConfig.skip_nonfinite_steps),
            seed=cfg.seed,
            max_prompt_length=max(map(len, prompts)),
            prompts_per_step=datamodule.settings.batch_size,
            gradient_checkpointing=cfg.model.get("gradient_checkpointing", False),
            completions_file=Path(cfg.paths.output_dir) / COMPLETIONS,
        )

    def callbacks(self, cfg: DictConfig, start_step: int) -> list[L.Callback]:
        return [TrimCompletions(Path(cfg.paths.output_dir) / COMPLETIONS, start_step)]

    def summary(self, module: GRPOModule, trainer: L.Trainer) -> dict[str, Any]:
        val = validation_metrics(trainer)
        last = module.last_metrics
        return {
            "val_accuracy": val.get("val/accuracy"),
            "val_reward": val.get("val/reward"),
            "train_reward_last": last.get("train/reward"),
            "train_accuracy_last": last.get("train/accuracy"),
            "rollout_tokens_per_s": module.rollout_tokens_per_s,
            "peak_mem_gib": peak_memory_gib(module.device),
        }


class TrimCompletions(L.Callback):
    """A resumed run's completions.jsonl keeps the rows of the steps up to its checkpoint (and no torn last
    line): the steps after it are trained, and logged, again."""

    def __init__(self, path: Path, start_step: int) -> None:
        self.path, self.start_step = path, start_step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text("utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line a kill tore
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= self.start_step:
                kept.append(line)
        write_atomically(self.path, "".join(f"{line}\n" for line in kept))
