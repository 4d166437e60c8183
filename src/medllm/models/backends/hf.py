"""transformers + PEFT (+ bitsandbytes for 4-bit): runs wherever PyTorch does, a GPU or the CPU.

torch, transformers and peft are imported inside the methods: this module is imported to pick the
backend, before Unsloth (another backend) may patch them.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from medllm.models.backends import Backend, ModelLoadError


def torch_dtype(name: str) -> Any:
    """``model.dtype`` as transformers takes it: a torch dtype, or "auto"."""
    import torch

    return name if name == "auto" else getattr(torch, name)


def offline_hint(name: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"Could not load {name!r}: {err}\nIt is neither a local folder nor in the Hugging Face cache, or the hub "
        f"is out of reach (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Download it once with "
        f"`hf download {name}`, or set model.name_or_path to a local folder, or use model=tiny_llama."
    )


def check_target_modules(model: Any, targets) -> None:
    """An unknown LoRA target is an error that lists the module names the model has."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    unknown = sorted(set(targets) - names)
    if unknown:
        raise ModelLoadError(
            f"model.lora.target_modules has {unknown}, which this model does not have. "
            f"Its linear layers are: {sorted(names)}."
        )


def _device_map() -> dict[str, int] | None:
    """Each process loads onto its own GPU (LOCAL_RANK under torchrun), or stays on the CPU."""
    import torch

    return {"": int(os.environ.get("LOCAL_RANK", 0))} if torch.cuda.is_available() else None


class HFBackend(Backend):
    name = "hf"

    def load_tokenizer(self, model_cfg: DictConfig) -> Any:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model_cfg.name_or_path, revision=model_cfg.get("revision"))
        except OSError as err:
            raise offline_hint(model_cfg.name_or_path, err) from err
        if tokenizer.pad_token_id is None:  # padding is masked by position, so any id will do
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def base_config(self, model_cfg: DictConfig) -> Any:
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(model_cfg.name_or_path, revision=model_cfg.get("revision"))
        except OSError as err:
            raise offline_hint(model_cfg.name_or_path, err) from err

    def load_base(self, model_cfg: DictConfig, tokenizer: Any, dtype: Any = None, quantize: bool | None = None) -> Any:
        from transformers import AutoModelForCausalLM

        quantization = None
        if model_cfg.load_in_4bit if quantize is None else quantize:
            import torch
            from transformers import BitsAndBytesConfig

            quantization = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
        try:
            return AutoModelForCausalLM.from_pretrained(
                model_cfg.name_or_path,
                revision=model_cfg.get("revision"),
                dtype=dtype or torch_dtype(model_cfg.dtype),
                quantization_config=quantization,
                attn_implementation=model_cfg.attn_implementation,
                device_map=_device_map(),
            )
        except OSError as err:
            raise offline_hint(model_cfg.name_or_path, err) from err

    def load_model(
        self,
        model_cfg: DictConfig,
        tokenizer: Any,
        adapter_path: str | None = None,
        trainable: bool = True,
        seed: int = 0,
        tokens_per_batch: int | None = None,
    ) -> Any:
        from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

        from medllm.models.lora import LoraSpec
        from medllm.models.memory import plan_checkpointing

        base = self.load_base(model_cfg, tokenizer)
        lora = LoraSpec.from_config(model_cfg.lora)
        plan = plan_checkpointing(
            model_cfg.gradient_checkpointing, base.config, tokens_per_batch, offloaded=True, lora=lora
        )
        checkpointing = bool(plan.setting) and trainable
        if model_cfg.load_in_4bit:
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=checkpointing)
        elif checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.enable_input_require_grads()
        if adapter_path is not None:
            model = PeftModel.from_pretrained(base, adapter_path, is_trainable=trainable)
        else:
            check_target_modules(base, model_cfg.lora.target_modules)
            model = get_peft_model(base, lora.peft_config())
        model.checkpointing_plan = plan
        return model


BACKEND = HFBackend()
