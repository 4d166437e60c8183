"""Weights & Biases for training runs, and what keeps secrets out of every logger.

* :func:`build_logger`: the configured logger, or loggers (``logger=many``: a logger config by name). For
  W&B, the mode is decided here, before the run starts: ``logger.mode`` if set, else ``WANDB_MODE`` if
  set, else online with an API key (``WANDB_API_KEY`` or a netrc entry for the W&B host, as
  ``wandb login`` writes) and offline without one. Offline needs no network: the run is written to
  ``<run dir>/wandb/offline-run-*`` and uploaded later with ``wandb sync``. An online run that can't
  start (no network) falls back to offline.
* secrets (see :mod:`medllm.config.secrets`) redacted in the logged config and in the command line
  that W&B records with the run.
* :class:`SampleGenerations`: a table (``val/samples``) of greedy generations for the first
  validation rows at each validation, W&B only.
* :func:`finishing_wandb_run`: finishes the W&B run when training ends or fails, so the next job of a
  Hydra multirun (same process) starts a run of its own.

wandb is imported only when W&B is used.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from medllm.config.schema import WandbLogger as WandbSettings
from medllm.config.schema_check import typed
from medllm.data.chat_format import ASSISTANT, EOS, IGNORE_INDEX, THINK_OPEN
from medllm.generation.hf_generate import generate
from medllm.runs.wandb_mode import redacted_argv, resolve_mode

log = logging.getLogger(__name__)

WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"
# medllm's knobs inside the W&B logger config: read here, removed before WandbLogger is instantiated.
SAMPLE_KNOBS = ("log_samples", "num_samples", "sample_max_new_tokens")


# ---- the logger ----------------------------------------------------------------------------------
def _start(kwargs: dict[str, Any], mode: str) -> WandbLogger:
    logger = instantiate({**kwargs, "mode": mode})
    with redacted_argv():
        _ = logger.experiment  # starts the run now (rank 0), while the command line is redacted
    return logger


def logger_configs(logger_cfg: DictConfig | None) -> list[DictConfig]:
    """The logger configs in ``logger``: itself (one with a ``_target_``), or each of its entries (logger=many)."""
    if not logger_cfg:
        return []
    if "_target_" in logger_cfg:
        return [logger_cfg]
    return [node for node in logger_cfg.values() if node]  # ~logger.wandb or wandb: null leaves one out


def build_logger(logger_cfg: DictConfig | None) -> Logger | list[Logger] | bool:
    """The configured logger, or the list of them for logger=many (False: none). W&B: the mode decided and
    logged, the run started."""
    if logger_cfg and "_target_" not in logger_cfg:
        return [_build_one(node) for node in logger_configs(logger_cfg)] or False
    return _build_one(logger_cfg) if logger_cfg else False


def _build_one(logger_cfg: DictConfig) -> Logger:
    if logger_cfg.get("_target_") != WANDB_TARGET:
        return instantiate(logger_cfg)
    kwargs = OmegaConf.to_container(logger_cfg, resolve=True)
    for knob in SAMPLE_KNOBS:
        kwargs.pop(knob, None)
    mode, why = resolve_mode(kwargs.pop("mode", None))
    if rank_zero_only.rank == 0:  # the other processes of a DDP run start no W&B run
        where = f"; files under {kwargs.get('save_dir')}/wandb, upload with `wandb sync`" if mode == "offline" else ""
        log.info("W&B: %s mode (%s)%s", mode, why, where)
    try:
        return _start(kwargs, mode)
    except Exception as err:
        if mode != "online":
            raise
        log.warning("W&B: the online run could not start (%s); logging offline instead (wandb sync it later)", err)
        return _start(kwargs, "offline")


@contextlib.contextmanager
def finishing_wandb_run() -> Iterator[None]:
    """Finish the W&B run started inside the block, marked failed if the block raised. Without this, the
    next job of a Hydra multirun would log into the same run. Nothing happens when W&B wasn't used."""
    failed = True
    try:
        yield
        failed = False
    finally:
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            try:
                wandb.finish(exit_code=1 if failed else 0)
            except Exception as err:  # never hide the training's own error
                log.warning("W&B: finishing the run failed: %s", err)


# ---- sample generations --------------------------------------------------------------------------
def _prompt_length(ids: list[int], labels: list[int], assistant_id: int | None) -> int:
    """Tokens up to and including ``<｜Assistant｜>``; else up to the first trained label."""
    if assistant_id is not None and assistant_id in ids:
        return ids.index(assistant_id) + 1
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))


def sample_rows(model: Any, tokenizer: Any, dataset: Any, num_samples: int, max_new_tokens: int) -> list[list[str]]:
    """``[prompt, generation, reference]`` for the first ``num_samples`` rows of a tokenized split: the prompt
    decoded from the row's tokens, a greedy completion of it and the row's trained completion. The
    model's mode and the global RNG state are as before afterwards."""
    rows = dataset.select(range(min(num_samples, len(dataset))))
    assistant_id = tokenizer.convert_tokens_to_ids(ASSISTANT)
    if assistant_id == tokenizer.unk_token_id:
        assistant_id = None
    think = tokenizer(f"{THINK_OPEN}\n", add_special_tokens=False)["input_ids"]
    prompts, shown, references = [], [], []
    for ids, labels in zip(rows["input_ids"], rows["labels"]):
        ids, labels = [int(t) for t in ids], [int(t) for t in labels]
        cut = _prompt_length(ids, labels, assistant_id)
        prompts.append(ids[:cut] + think)  # the row's own ids: its text stays text
        shown.append(tokenizer.decode(ids[:cut], skip_special_tokens=True).strip())
        reference = tokenizer.decode(ids[cut:], skip_special_tokens=False)
        references.append(reference.removeprefix(f"{THINK_OPEN}\n").removesuffix(EOS))
    if not prompts:
        return []
    was_training = model.training
    device = getattr(model, "device", torch.device("cpu"))
    # generate() seeds the global RNG: keep training's random stream (dropout) as if this never ran.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        generations = generate(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=len(prompts), progress=False
        )
    model.train(was_training)
    return [[p, g[0], r] for p, g, r in zip(shown, generations, references)]


class SampleGenerations(L.Callback):
    """At the end of each validation, on rank 0, with a W&B logger: greedy completions of the first
    ``num_samples`` validation prompts, logged as the table ``val/samples`` (step, prompt, generation,
    reference), keyed by the same step as the val/* metrics."""

    key = "val/samples"
    columns = ("step", "prompt", "generation", "reference")

    def __init__(self, num_samples: int = 4, max_new_tokens: int = 128):
        self.num_samples = num_samples
        self.max_new_tokens = max_new_tokens
        self._logged_step: int | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.num_samples < 1:
            return
        step = trainer.global_step  # optimizer steps taken: the step val/* are keyed by
        if step == self._logged_step:  # the final validation after fit, at the step already shown
            return
        loggers = [
            lg
            for lg in trainer.loggers
            if isinstance(lg, WandbLogger) and not getattr(lg.experiment, "disabled", False)
        ]
        datamodule = trainer.datamodule
        dataset = getattr(datamodule, "splits", {}).get("val")
        if not loggers or dataset is None:
            return
        model = getattr(pl_module, "model", pl_module)
        rows = sample_rows(model, datamodule.tokenizer, dataset, self.num_samples, self.max_new_tokens)
        for logger in loggers:
            logger.log_table(self.key, columns=list(self.columns), data=[[step, *row] for row in rows], step=step)
        self._logged_step = step


def sample_callbacks(logger_cfg: DictConfig | None) -> list[L.Callback]:
    """The sample-generation callback when a logger is W&B with ``log_samples`` on."""
    wandb_cfgs = [c for c in logger_configs(logger_cfg) if c.get("_target_") == WANDB_TARGET]
    knobs = [typed({k: c[k] for k in SAMPLE_KNOBS if k in c}, WandbSettings, "logger.") for c in wandb_cfgs]
    return [SampleGenerations(k.num_samples, k.sample_max_new_tokens) for k in knobs if k.log_samples][:1]
