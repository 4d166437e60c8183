"""The LoRA adapter as the config describes it, turned into what PEFT or Unsloth take."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig, TaskType

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = field(default=LLAMA_PROJECTIONS)
    use_rslora: bool = False

    @classmethod
    def from_config(cls, cfg) -> LoraSpec:
        return cls(
            r=int(cfg.r),
            alpha=int(cfg.alpha),
            dropout=float(cfg.dropout),
            target_modules=tuple(cfg.target_modules),
            use_rslora=bool(cfg.get("use_rslora", False)),
        )

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
