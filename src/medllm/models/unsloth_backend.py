"""The Unsloth backend: Unsloth's patched Llama with its fused LoRA kernels, on an NVIDIA GPU.

``unsloth`` is imported inside the function: importing it raises on a machine without a GPU, and it
must come before transformers and peft are imported to patch them (train.py takes care of that).
"""

from __future__ import annotations

import os

from omegaconf import DictConfig

from medllm.models.loader import DTYPES, ModelLoadError, check_target_modules
from medllm.models.lora import LoraSpec
from medllm.models.memory import plan_checkpointing


def load_unsloth(
    cfg: DictConfig,
    adapter_path: str | None = None,
    trainable: bool = True,
    seed: int = 0,
    tokens_per_batch: int | None = None,
):
    try:
        from unsloth import FastLanguageModel
    except ImportError as err:
        raise ModelLoadError(
            f"model.backend=unsloth needs Unsloth and an NVIDIA GPU ({err}). Install it with "
            "`pip install -e '.[gpu]'`, or use model=r1_distill_llama_8b_hf (transformers + PEFT)."
        ) from err
    optional = {k: cfg[k] for k in ("attn_implementation", "revision") if cfg.get(k) is not None}
    model, _ = FastLanguageModel.from_pretrained(
        model_name=adapter_path or cfg.name_or_path,
        max_seq_length=cfg.max_seq_length,
        load_in_4bit=cfg.load_in_4bit,
        dtype=None if cfg.dtype == "auto" else DTYPES[cfg.dtype],
        device_map={"": int(os.environ.get("LOCAL_RANK", 0))},
        **optional,
    )
    if adapter_path is not None:
        if trainable:
            model.train()
        else:
            FastLanguageModel.for_inference(model)
        return model
    check_target_modules(model, cfg.lora.target_modules)
    plan = plan_checkpointing(cfg.gradient_checkpointing, model.config, tokens_per_batch)
    lora = LoraSpec.from_config(cfg.lora)
    model = FastLanguageModel.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        use_gradient_checkpointing=plan.setting,
        use_rslora=lora.use_rslora,
        random_state=seed,
    )
    model.checkpointing_plan = plan
    return model
