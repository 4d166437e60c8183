"""The tiny random Llama (``model=tiny_llama``) with its in-process tokenizer, through transformers + PEFT.

Built, not downloaded: ``model.tiny`` holds its sizes and seed, so eval.py rebuilds the exact base a
run trained its adapter on. Everything past the base (4-bit preparation, checkpointing, LoRA) is the
hf backend's.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from medllm.models.backends.hf import HFBackend


def _sizes(model_cfg: DictConfig) -> dict[str, Any]:
    """``model.tiny`` less the tokenizer's vocabulary size (the model's is the tokenizer's length)."""
    return {k: v for k, v in model_cfg.tiny.items() if k != "vocab_size"}


class TinyBackend(HFBackend):
    name = "tiny"

    def load_tokenizer(self, model_cfg: DictConfig) -> Any:
        from medllm.models.tiny import tiny_tokenizer

        return tiny_tokenizer(model_cfg.tiny.vocab_size)

    def base_config(self, model_cfg: DictConfig) -> Any:
        from medllm.models.tiny import tiny_config

        sizes = {k: v for k, v in _sizes(model_cfg).items() if k != "seed"}
        return tiny_config(self.load_tokenizer(model_cfg), attn_implementation=model_cfg.attn_implementation, **sizes)

    def load_base(self, model_cfg: DictConfig, tokenizer: Any, dtype: Any = None, quantize: bool | None = None) -> Any:
        """The tiny model in float32, whatever ``dtype`` and ``quantize`` say: it is small enough anywhere."""
        from medllm.models.tiny import tiny_llama

        return tiny_llama(tokenizer, attn_implementation=model_cfg.attn_implementation, **_sizes(model_cfg))


BACKEND = TinyBackend()
