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

from medllm.config.secrets import redact_secrets
from medllm.errors import MedllmError
from medllm.models.backends import get_backend
from medllm.models.export import run_exports
from medllm.runs.layout import LAST_CHECKPOINT, RunDir, checkpoint_dir
from medllm.runs.library_logs import once_through_the_root
from medllm.runs.record import RunRecord
from medllm.training.checkpoint_io import AtomicCheckpointIO
from medllm.training.resume import (
    RecordInCheckpoints,
    check_resumable,
    check_same_rows,
    continue_csv_log,
    find_checkpoint,
    record_differences,
)
from medllm.training.stage import SFT, Stage, trainer_settings
from medllm.training.wandb_logging import build_logger, finishing_wandb_run

log = logging.getLogger(__name__)

# Lightning warns that, under manual optimization, step checkpoints hold the state after the update:
# that is the state to resume from.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")

# Trainer knobs that medllm applies itself (token-weighted accumulation, clipping after rescaling).
MODULE_TRAINER_KEYS = ("accumulate_grad_batches", "gradient_clip_val")


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback]) -> L.Trainer:
    trainer_cfg = dataclasses.asdict(trainer_settings(cfg))
    accumulation = trainer_cfg["accumulate_grad_batches"]
    for key in MODULE_TRAINER_KEYS:
        trainer_cfg.pop(key)
    if isinstance(trainer_cfg.get("val_check_interval"), int):  # Lightning counts micro-batches; we count steps
        trainer_cfg["val_check_interval"] *= accumulation
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


def finished_summary(cfg: DictConfig, out_dir: Path) -> dict | None:
    """``ckpt_path=auto`` on a run that finished: its summary, read, nothing written (RunDirGuard wrote nothing).

    Only for the same command: a finished run of other settings (a resumed sweep whose jobs get other
    values) is an error, never its old summary reported for the new settings."""
    run = RunDir(out_dir)
    if cfg.get("ckpt_path") != "auto" or not run.summary_file.is_file():
        return None
    record = RunRecord.read(run.adapter)
    if record is not None:
        steps = [
            f"trainer.{key}: {record.config['trainer'].get(key)} -> {cfg.trainer.get(key)}"
            for key in ("max_steps", "max_epochs")
            if record.config["trainer"].get(key) != cfg.trainer.get(key)
        ]
        changes = record_differences(record, cfg) + steps
        if changes:
            raise MedllmError(
                f"{out_dir} holds a finished run of other settings ({'; '.join(changes)}); choose another "
                f"hydra.run.dir (to train on from it: ckpt_path={checkpoint_dir(cfg, out_dir) / LAST_CHECKPOINT})."
            )
    log.info("ckpt_path=auto: %s finished already (%s); nothing to resume, nothing changed", out_dir, run.summary_file)
    return run.read_summary()


LOCAL_PATHS = ("model.name_or_path", "data.path", "data.test_path")


def absolute_local_paths(cfg: DictConfig) -> None:
    """Relative paths of local files made absolute (in place), as this folder resolves them: checkpoints and the
    adapter's record name the files trained on, which eval.py or a resume started elsewhere must find again."""
    for key in LOCAL_PATHS:
        value = OmegaConf.select(cfg, key)
        path = Path(value).expanduser() if isinstance(value, str) and value else None
        if path is not None and not path.is_absolute() and path.exists():
            OmegaConf.update(cfg, key, str(path.resolve()))


def fit_validation_to_epoch(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """A ``trainer.val_check_interval`` of more optimizer steps than an epoch of this data holds, where validation
    counts within epochs: Lightning refuses it once the model has loaded. The run validates at the end of each
    epoch instead, and says so (a GPU experiment's 50 steps on a user's first file of 40 rows)."""
    settings = trainer_settings(cfg)
    interval = settings.val_check_interval
    if not isinstance(interval, int) or isinstance(interval, bool) or settings.check_val_every_n_epoch is None:
        return
    steps = math.ceil(len(datamodule.train_dataloader()) / settings.accumulate_grad_batches)
    if interval > steps:
        log.warning(
            "trainer.val_check_interval=%d optimizer steps is more than an epoch of this data (%d steps): "
            "validating at the end of each epoch instead (trainer.val_check_interval=1.0)",
            interval,
            steps,
        )
        OmegaConf.update(cfg, "trainer.val_check_interval", 1.0)


def stage_of(cfg: DictConfig) -> Stage:
    """The training stage ``cfg.stage`` names (``stage=sft | grpo``); SFT for a config without one."""
    return instantiate(cfg.stage, _recursive_=False) if cfg.get("stage") is not None else SFT()


@finishing_wandb_run()  # each Hydra multirun job its own W&B run, even when one fails
def train(cfg: DictConfig) -> dict:
    """Prepare the data (failing fast on bad rows), load the model, fit, save adapter and summary.

    ``cfg`` has passed ``check_train_config``: train.py checks it before importing the backend, once.
    """
    once_through_the_root()
    absolute_local_paths(cfg)
    out_dir = Path(cfg.paths.output_dir)
    finished = finished_summary(cfg, out_dir)
    if finished is not None:
        return finished
    checkpoints = checkpoint_dir(cfg, out_dir)
    checkpoint = find_checkpoint(cfg.get("ckpt_path"), checkpoints, out_dir)  # read and checked before any model loads
    if checkpoint is not None:
        check_resumable(checkpoint, cfg)
    start_step = checkpoint.global_step if checkpoint else 0
    L.seed_everything(cfg.seed, workers=True)

    stage = stage_of(cfg)
    tokenizer = get_backend(cfg.model.backend).load_tokenizer(cfg.model)
    datamodule = stage.datamodule(cfg, tokenizer)
    datamodule.setup("fit")  # validates and tokenizes before any model weight is loaded
    fit_validation_to_epoch(cfg, datamodule)
    # What checkpoints and the adapter folder carry: eval.py rebuilds the model, data split and prompt from it.
    record = RunRecord.of_config(cfg).with_data(datamodule.chat_format.record(), datamodule.fingerprint())
    if checkpoint is not None:
        check_same_rows(checkpoint, record)  # an edited data file: refused before any model loads

    model = stage.load_model(cfg, tokenizer)
    module = stage.module(cfg, model, datamodule, tokenizer)
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()]
    callbacks += [*stage.callbacks(cfg, start_step), RecordInCheckpoints(record)]
    trainer = build_trainer(cfg, callbacks)
    for logger in trainer.loggers:  # every one of them with logger=many
        if checkpoint is not None and trainer.is_global_zero:
            continue_csv_log(logger, start_step)
        logger.log_hyperparams(redact_secrets(OmegaConf.to_container(cfg, resolve=True)))
        if checkpoint is None:  # a resumed run's log has this row already
            logger.log_metrics(datamodule.summary.metrics(), step=0)

    try:
        # weights_only=False: the checkpoint also holds RNG states (NumPy arrays); medllm wrote it itself.
        resume_from = checkpoint.path if checkpoint else None
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=False)
    except torch.OutOfMemoryError as err:
        raise MedllmError(
            f"the GPU ran out of memory ({err}). Lower data.batch_size (raise trainer.accumulate_grad_batches to "
            "keep the effective batch), lower max_seq_length, or turn on model.gradient_checkpointing=unsloth."
        ) from err
    trainer.save_checkpoint(checkpoints / LAST_CHECKPOINT)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    # Lightning's teardown leaves the module on the CPU: exports (merging, GGUF) run where training ran.
    module.to(trainer.strategy.root_device)

    summary = {
        "train_loss_first": module.first_train_loss,
        "train_loss_last": module.last_train_loss,
        "steps": trainer.global_step,
        "world_size": trainer.world_size,
        **stage.summary(module, trainer),
        "data": datamodule.summary.metrics(),
    }
    if trainer.is_global_zero:
        run = RunDir(out_dir)
        module.model.save_pretrained(run.adapter)
        tokenizer.save_pretrained(run.adapter)
        record.write(run.adapter)
        run_exports(cfg.get("export"), cfg.model, module.model, tokenizer, out_dir)
        run.write_summary(summary)
        log.info("adapter: %s; summary: %s", run.adapter, json.dumps(summary))
    return summary
