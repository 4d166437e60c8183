"""The LoRA adapter as the config describes it (``model.lora``), and what PEFT or Unsloth take of it."""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig, TaskType

from medllm.config.schema import Lora
from medllm.config.schema_check import typed


@dataclass
class LoraSpec(Lora):
    """``model.lora``'s settings, with the schema's defaults and rules."""

    @classmethod
    def from_config(cls, cfg) -> LoraSpec:
        return typed(cfg, cls, "model.lora.")

    def peft_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            use_rslora=self.use_rslora,
            bias="none",
            task_type=TaskType.CAUSAL_LM,
        )
