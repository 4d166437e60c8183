"""Loads the tokenizer and the LoRA-wrapped model that the ``model`` config group describes."""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from medllm.errors import MedllmError
from medllm.models import tiny
from medllm.models.lora import LoraSpec
from medllm.models.memory import plan_checkpointing

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


class ModelLoadError(MedllmError, RuntimeError):
    """The model or tokenizer could not be loaded; the message says what to do."""


def _offline_hint(name: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"Could not load {name!r}: {err}\nIt is neither a local folder nor in the Hugging Face cache, or the hub "
        f"is out of reach (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Download it once with "
        f"`hf download {name}`, or set model.name_or_path to a local folder, or use model=tiny_llama."
    )


def is_tiny(cfg: DictConfig) -> bool:
    return cfg.get("name_or_path") is None


def load_tokenizer(cfg: DictConfig) -> PreTrainedTokenizerBase:
    if is_tiny(cfg):
        return tiny.tiny_tokenizer(cfg.tiny.vocab_size)
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.get("revision"))
    except OSError as err:
        raise _offline_hint(cfg.name_or_path, err) from err
    if tokenizer.pad_token_id is None:  # padding is masked by position, so any id will do
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _device_map() -> dict[str, int] | None:
    """Each process loads onto its own GPU (LOCAL_RANK under torchrun), or stays on the CPU."""
    return {"": int(os.environ.get("LOCAL_RANK", 0))} if torch.cuda.is_available() else None


def load_hf_base(
    cfg: DictConfig, tokenizer, dtype: torch.dtype | None = None, quantize: bool | None = None
) -> torch.nn.Module:
    """The base through transformers: in ``dtype`` (the config's by default), 4-bit when ``quantize``
    (``model.load_in_4bit`` by default)."""
    if is_tiny(cfg):  # model.tiny holds tiny_llama's sizes and seed (and the tokenizer's vocab size)
        sizes = {k: v for k, v in cfg.tiny.items() if k != "vocab_size"}
        return tiny.tiny_llama(tokenizer, attn_implementation=cfg.attn_implementation, **sizes)
    quantization = None
    if cfg.load_in_4bit if quantize is None else quantize:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    try:
        return AutoModelForCausalLM.from_pretrained(
            cfg.name_or_path,
            revision=cfg.get("revision"),
            dtype=dtype or DTYPES[cfg.dtype],
            quantization_config=quantization,
            attn_implementation=cfg.attn_implementation,
            device_map=_device_map(),
        )
    except OSError as err:
        raise _offline_hint(cfg.name_or_path, err) from err


def load_model(
    cfg: DictConfig,
    tokenizer,
    adapter_path: str | None = None,
    trainable: bool = True,
    seed: int = 0,
    tokens_per_batch: int | None = None,
) -> torch.nn.Module:
    """The base model with a LoRA adapter: a new one (training) or the one saved at ``adapter_path``.

    ``tokens_per_batch`` (the largest micro-batch) lets ``gradient_checkpointing=auto`` decide.
    The returned model carries ``checkpointing_plan``: what was decided and why.
    """
    if cfg.backend == "unsloth":
        from medllm.models.unsloth_backend import load_unsloth

        return load_unsloth(cfg, adapter_path, trainable, seed, tokens_per_batch)
    if cfg.backend != "hf":
        raise ModelLoadError(f"model.backend must be 'hf' or 'unsloth', got {cfg.backend!r}")
    base = load_hf_base(cfg, tokenizer)
    plan = plan_checkpointing(cfg.gradient_checkpointing, base.config, tokens_per_batch, offloaded=True)
    checkpointing = bool(plan.setting) and trainable
    if cfg.load_in_4bit:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    if adapter_path is not None:
        model = PeftModel.from_pretrained(base, adapter_path, is_trainable=trainable)
    else:
        check_target_modules(base, cfg.lora.target_modules)
        model = get_peft_model(base, LoraSpec.from_config(cfg.lora).peft_config())
    model.checkpointing_plan = plan
    return model


def check_target_modules(model: torch.nn.Module, targets) -> None:
    """An unknown LoRA target is an error that lists the module names the model has."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    unknown = sorted(set(targets) - names)
    if unknown:
        raise ModelLoadError(
            f"model.lora.target_modules has {unknown}, which this model does not have. "
            f"Its linear layers are: {sorted(names)}."
        )
