"""The policy GRPO trains: a 16-bit base with a LoRA adapter, which the rollouts decode with as it trains.

The base is loaded as evaluation's merged engine loads it (``medllm.generation.merged``): 16-bit on the GPU,
rounded to NF4 and back where the model config trains on a 4-bit base, so an SFT adapter trained with QLoRA
sees the very weights it was trained on, and the base's matmuls are those bitsandbytes computes after
dequantizing. One copy of the weights serves both the training forward and the compiled decoder, which reads
the adapter's own parameters: every rollout samples from the policy as it is after the last optimizer step,
with no weights copied or synced. (Unsloth's 4-bit model is not used here: its patched attention can't run
the decoder's static cache, and the decoder is what makes a GRPO step fast.)

The KL reference (``stage.beta > 0``) is the policy GRPO started from: the base with the adapter switched off,
or, starting from an SFT adapter (``init_adapter``), a frozen second copy of that adapter (tens of MB, never a
second copy of the base).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig
from peft import PeftModel, get_peft_model

from medllm.generation.merged import load_merged_base
from medllm.models.backends.hf import check_target_modules
from medllm.models.lora import LoraSpec

log = logging.getLogger(__name__)

TRAINED = "default"  # PEFT's name of the adapter it creates or loads first
REFERENCE = "reference"


def load_policy(cfg: DictConfig, tokenizer: Any, with_reference: bool) -> PeftModel:
    """The base (see the module's doc) with a new adapter, or ``init_adapter`` to train on; with
    ``with_reference`` and an ``init_adapter``, a frozen copy of it as the KL reference."""
    base = load_merged_base(cfg.model, tokenizer, str(cfg.trainer.get("accelerator", "auto")))
    init = cfg.get("init_adapter")
    if init:
        model = PeftModel.from_pretrained(base, init, adapter_name=TRAINED, is_trainable=True)
        if with_reference:
            model.load_adapter(init, adapter_name=REFERENCE, is_trainable=False)
            model.set_adapter(TRAINED)  # trainable again: PEFT's set_adapter sets which adapter takes gradients
    else:
        check_target_modules(base, cfg.model.lora.target_modules)
        model = get_peft_model(base, LoraSpec.from_config(cfg.model.lora).peft_config())
    return model


@contextmanager
def reference_policy(model: PeftModel) -> Iterator[None]:
    """``model`` computes the reference policy's log-probabilities inside: the starting adapter, or the base."""
    if REFERENCE not in model.peft_config:
        with model.disable_adapter():
            yield
        return
    model.set_adapter(REFERENCE)
    try:
        yield
    finally:
        model.set_adapter(TRAINED)


def enable_checkpointing(model: PeftModel) -> None:
    """Recompute the decoder layers' activations in the backward pass (transformers' non-reentrant
    checkpointing, which needs no gradient on the inputs)."""
    model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
