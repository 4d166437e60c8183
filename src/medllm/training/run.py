"""One training run, from a composed config to an adapter, a checkpoint and a summary."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from medllm.config_checks import check_train_config
from medllm.errors import MedllmError
from medllm.models.export import run_exports
from medllm.models.loader import load_model, load_tokenizer
from medllm.training.callbacks import ThroughputMonitor
from medllm.training.checkpoint_io import AtomicCheckpointIO
from medllm.training.module import ReasoningSFTModule
from medllm.training.wandb_logging import build_logger, finishing_wandb_run, redact_secrets, sample_callbacks

log = logging.getLogger(__name__)

# Lightning warns that, under manual optimization, step checkpoints hold the state after the update:
# that is the state to resume from.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")

# Trainer knobs that medllm applies itself (token-weighted accumulation, clipping after rescaling).
MODULE_TRAINER_KEYS = ("accumulate_grad_batches", "gradient_clip_val")


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback]) -> L.Trainer:
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key in MODULE_TRAINER_KEYS:
        trainer_cfg.pop(key, None)
    strategy = trainer_cfg.pop("strategy", "auto")
    if isinstance(strategy, dict):
        strategy = instantiate(strategy)
    logger = build_logger(cfg.get("logger"))  # W&B: online or offline decided here, the run started
    return L.Trainer(
        **trainer_cfg,
        strategy=strategy,
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the data module shards batches itself (see data/sampler.py)
        default_root_dir=cfg.paths.output_dir,
    )


def resolve_ckpt_path(ckpt_path: str | None, out_dir: Path) -> str | None:
    """``auto``: the newest checkpoint of this run dir (None, a fresh start, if there is none)."""
    if ckpt_path != "auto":
        return ckpt_path
    found = sorted((out_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        log.info("ckpt_path=auto: no checkpoint in %s, starting fresh", out_dir / "checkpoints")
        return None
    log.info("ckpt_path=auto: resuming from %s", found[-1])
    return str(found[-1])


@finishing_wandb_run()  # each Hydra multirun job its own W&B run, even when one fails
def train(cfg: DictConfig) -> dict:
    """Prepare the data (failing fast on bad rows), load the model, fit, save adapter and summary."""
    check_train_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), out_dir)

    tokenizer = load_tokenizer(cfg.model)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup("fit")  # validates and tokenizes before any model weight is loaded

    tokens_per_batch = cfg.data.batch_size * cfg.max_seq_length
    model = load_model(cfg.model, tokenizer, seed=cfg.seed, tokens_per_batch=tokens_per_batch)
    module = ReasoningSFTModule(
        model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        accumulate_grad_batches=cfg.trainer.get("accumulate_grad_batches", 1),
        gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
        skip_nonfinite_steps=cfg.get("skip_nonfinite_steps", 0),
    )
    throughput = ThroughputMonitor(warmup_steps=cfg.get("throughput_warmup_steps", 1))
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()] + [throughput]
    callbacks += sample_callbacks(cfg.get("logger"))  # W&B table of generations at each validation
    trainer = build_trainer(cfg, callbacks)
    if trainer.logger is not None:
        trainer.logger.log_hyperparams(redact_secrets(OmegaConf.to_container(cfg, resolve=True)))
        trainer.logger.log_metrics(datamodule.summary.metrics(), step=0)

    try:
        # weights_only=False: the checkpoint also holds RNG states (NumPy arrays); medllm wrote it itself.
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    except torch.OutOfMemoryError as err:
        raise MedllmError(
            f"the GPU ran out of memory ({err}). Lower data.batch_size (raise trainer.accumulate_grad_batches to "
            "keep the effective batch), lower max_seq_length, or turn on model.gradient_checkpointing=unsloth."
        ) from err
    trainer.save_checkpoint(out_dir / "checkpoints" / "last.ckpt")
    trainer.validate(module, datamodule=datamodule, verbose=False)
    # Lightning's teardown leaves the module on the CPU: exports (merging, GGUF) run where training ran.
    module.to(trainer.strategy.root_device)
    val = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")}

    summary = {
        "train_loss_first": module.first_train_loss,
        "train_loss_last": module.last_train_loss,
        "val_loss": val.get("val/loss"),
        "val_ppl": val.get("val/ppl"),
        "steps": trainer.global_step,
        "world_size": trainer.world_size,
        "timed_tokens": throughput.timed_tokens,
        "tokens_per_s": _finite_or_none(throughput.tokens_per_s),
        "trained_tokens_per_s": _finite_or_none(throughput.trained_tokens_per_s),
        "peak_mem_gib": throughput.peak_gib,
        "gradient_checkpointing": dataclasses.asdict(model.checkpointing_plan),
        "data": datamodule.summary.metrics(),
    }
    if trainer.is_global_zero:
        module.model.save_pretrained(out_dir / "adapter")
        tokenizer.save_pretrained(out_dir / "adapter")
        run_exports(cfg.get("export"), cfg.model, module.model, tokenizer, out_dir)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        log.info("adapter: %s; summary: %s", out_dir / "adapter", json.dumps(summary))
    return summary
