"""Unsloth: its patched Llama with fused LoRA kernels and offloaded checkpointing, on an NVIDIA GPU.

``unsloth`` is imported only inside the methods: importing it raises on a machine without a GPU, and
it must come before transformers and peft are imported to patch them (``prepare``, which train.py
and eval.py call first). Tokenizer and plain base (merges, exports) load through transformers, as in
the hf backend.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from omegaconf import DictConfig

from medllm.models.backends import Backend, ModelLoadError, get_backend
from medllm.models.backends.hf import HFBackend, check_target_modules, torch_dtype

log = logging.getLogger(__name__)


class UnslothBackend(HFBackend):
    name = "unsloth"

    def prepare(self) -> None:
        try:
            import unsloth  # noqa: F401
        except Exception as err:  # ImportError, or Unsloth's own error on a machine without a GPU
            raise ModelLoadError(
                f"model.backend=unsloth could not start ({type(err).__name__}: {err}). It needs an NVIDIA GPU "
                "and `pip install -e '.[gpu]'`; elsewhere use model=r1_distill_llama_8b_hf or model=tiny_llama."
            ) from err
        from medllm.models import unsloth_varlen

        if unsloth_varlen.install():
            log.info("packed rows attend through torch's varlen flash kernel (enable_gqa supplied for this torch)")

    def in_this_process(self) -> Backend:
        """transformers + PEFT where Unsloth was not imported first (eval.py imports it only where the
        model runs as trained): Unsloth imported after transformers would patch nothing."""
        return self if "unsloth" in sys.modules else get_backend("hf")

    def load_model(
        self,
        model_cfg: DictConfig,
        tokenizer: Any,
        adapter_path: str | None = None,
        trainable: bool = True,
        seed: int = 0,
        tokens_per_batch: int | None = None,
    ) -> Any:
        try:
            from unsloth import FastLanguageModel
        except ImportError as err:
            raise ModelLoadError(
                f"model.backend=unsloth needs Unsloth and an NVIDIA GPU ({err}). Install it with "
                "`pip install -e '.[gpu]'`, or use model=r1_distill_llama_8b_hf (transformers + PEFT)."
            ) from err
        from medllm.models.lora import LoraSpec
        from medllm.models.memory import plan_checkpointing

        optional = {k: model_cfg[k] for k in ("attn_implementation", "revision") if model_cfg.get(k) is not None}
        model, _ = FastLanguageModel.from_pretrained(
            model_name=adapter_path or model_cfg.name_or_path,
            max_seq_length=model_cfg.max_seq_length,
            load_in_4bit=model_cfg.load_in_4bit,
            dtype=None if model_cfg.dtype == "auto" else torch_dtype(model_cfg.dtype),
            device_map={"": int(os.environ.get("LOCAL_RANK", 0))},
            **optional,
        )
        if adapter_path is not None:
            if trainable:
                model.train()
            else:
                FastLanguageModel.for_inference(model)
            return model
        check_target_modules(model, model_cfg.lora.target_modules)
        lora = LoraSpec.from_config(model_cfg.lora)
        plan = plan_checkpointing(model_cfg.gradient_checkpointing, model.config, tokens_per_batch, lora=lora)
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

    def for_inference(self, model: Any) -> None:
        """Unsloth's fast generation path (its kernels are set up for training otherwise)."""
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)


BACKEND = UnslothBackend()
