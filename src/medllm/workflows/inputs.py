"""What a config names, read before any model library is imported: a bad row or file fails in seconds.

Light on purpose (datasets, no torch, transformers or peft): train.py calls it before Unsloth, which must
be imported before transformers, is prepared.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from medllm.config.checks import eval_after_training_config
from medllm.config.inputs import ADAPTER_CONFIG, find_adapters
from medllm.config.schema import is_grpo, scores_held_out
from medllm.data.rows import check_data
from medllm.errors import ConfigError, MedllmError
from medllm.runs.record import RunRecord, base_model, lora_shape
from medllm.tasks.benchmarks import load_items
from medllm.tasks.items import BenchmarkItem
from medllm.tasks.problems import Problem, normalize_answer, read_problems

log = logging.getLogger(__name__)


def check_inputs(cfg: DictConfig) -> None:
    """The training rows or problems, the adapter GRPO starts from and the evaluation's items, read and checked
    with no tokenizer or model."""
    if is_grpo(cfg):
        problems, _, _ = read_problems(
            *(cfg.data.get(key) for key in ("path", "format", "hub_name", "subset", "split", "revision", "hub_token"))
        )
        if cfg.get("init_adapter"):
            check_init_adapter(cfg)
    else:
        check_data(cfg.data)
    items = check_eval_items(cfg)
    if is_grpo(cfg) and items:
        check_contamination(problems, items, cfg.stage.get("contamination", "warn"))


def check_eval_items(cfg: DictConfig) -> list[BenchmarkItem]:
    """For ``eval_after_training``, its benchmark's items: a bad file or an unreachable hub fails now."""
    if not cfg.get("eval_after_training"):
        return []
    eval_cfg, _ = eval_after_training_config(cfg, adapter=None)
    if scores_held_out(eval_cfg):
        return []
    try:
        return load_items(eval_cfg)
    except MedllmError as err:
        raise ConfigError(f"eval_after_training: {err}") from None


def check_init_adapter(cfg: DictConfig) -> None:
    """``init_adapter``: an adapter folder trained on this base, of the LoRA shape ``model.lora`` says (the run
    record and every later evaluation describe the adapter by them)."""
    (path,) = find_adapters(adapter_path=cfg.init_adapter)
    saved = json.loads((Path(path).expanduser() / ADAPTER_CONFIG).read_text("utf-8"))
    shape = {"r": saved.get("r"), "alpha": saved.get("lora_alpha"), "target_modules": saved.get("target_modules") or []}
    trained = lora_shape(OmegaConf.create(shape))
    given = lora_shape(cfg.model.lora)
    wrong = [
        f"model.lora.{key}={given[key]} (the adapter's: {trained[key]})" for key in given if given[key] != trained[key]
    ]
    if wrong:
        fix = " ".join(f"model.lora.{key}={trained[key]}" for key in given if given[key] != trained[key])
        raise ConfigError(f"init_adapter={path} has another LoRA shape: {'; '.join(wrong)}; pass {fix}")
    record = RunRecord.read(path)
    if record is not None and record.base_model != base_model(cfg.model):
        raise ConfigError(
            f"init_adapter={path} was trained on another base ({record.base_model}); this run loads "
            f"{base_model(cfg.model)}: pass the run's model group (and model.name_or_path)."
        )


def check_contamination(problems: Sequence[Problem], items: Sequence[BenchmarkItem], policy: str) -> int:
    """How many training problems ask a question of the benchmark evaluated after training (the same text,
    case, spacing and punctuation aside): warned about, or refused with ``stage.contamination=error``."""
    if policy == "off":
        return 0
    asked = {normalize_answer(item.question) for item in items}
    shared = [problem.id for problem in problems if normalize_answer(problem.question) in asked]
    if not shared:
        return 0
    message = (
        f"{len(shared)} of the {len(problems)} training problems are questions of the benchmark eval_after_training "
        f"scores (ids {', '.join(shared[:5])}{', ...' if len(shared) > 5 else ''}): its accuracy would measure recall"
    )
    if policy == "error":
        raise ConfigError(f"{message}. Remove them, or set stage.contamination=warn to train anyway.")
    log.warning("%s (stage.contamination=warn)", message)
    return len(shared)
