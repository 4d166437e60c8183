"""What a config names, read before any model library is imported: a bad row or file fails in seconds.

Light on purpose (datasets, no torch, transformers or peft): train.py calls it before Unsloth, which must
be imported before transformers, is prepared.
"""

from __future__ import annotations

from omegaconf import DictConfig

from medllm.config.checks import eval_after_training_config
from medllm.config.schema import scores_held_out
from medllm.data.rows import check_data
from medllm.errors import ConfigError, MedllmError
from medllm.tasks.benchmarks import load_items


def check_inputs(cfg: DictConfig) -> None:
    """The training rows and the evaluation's items, read and checked with no tokenizer or model."""
    check_data(cfg.data)
    check_eval_items(cfg)


def check_eval_items(cfg: DictConfig) -> None:
    """For ``eval_after_training``, its benchmark's items: a bad file or an unreachable hub fails now."""
    if not cfg.get("eval_after_training"):
        return
    eval_cfg, _ = eval_after_training_config(cfg, adapter=None)
    if not scores_held_out(eval_cfg):
        try:
            load_items(eval_cfg)
        except MedllmError as err:
            raise ConfigError(f"eval_after_training: {err}") from None
