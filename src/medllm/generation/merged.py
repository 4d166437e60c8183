"""The merged engine: a 16-bit base with each adapter merged into its weights, one at a time.

A LoRA adapter left unmerged costs two small matmuls per projection per token, and a 4-bit base
dequantizes every weight at every step; merged 16-bit weights decode at the speed of the plain model.
An adapter trained on the 4-bit base (QLoRA) learned on the NF4-rounded weights, so the base is
rounded to NF4 and back exactly as bitsandbytes did when training loaded it: base and adapters are
scored on the weights they were trained on, in the precision generation runs at.

Adapters are merged in place with PEFT and the base's weights are restored from a copy afterwards
(an unmerge would subtract in bf16 and drift), so the model's tensors never move: compiled decoding
steps stay valid from one adapter to the next.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from omegaconf import DictConfig
from peft import LoraConfig, PeftModel

from medllm.models.backends import ModelLoadError, get_backend

log = logging.getLogger(__name__)


def _round_trip_nf4(model: torch.nn.Module) -> None:
    """Every linear layer but the output head, rounded to NF4 as bitsandbytes' 4-bit loading does."""
    try:
        import bitsandbytes.functional as bnb
    except ImportError as err:
        raise ModelLoadError(
            f"the merged engine needs bitsandbytes to rebuild the 4-bit base the adapter was trained on ({err}); "
            "`pip install -e '.[gpu]'`, or engine=peft"
        ) from err
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
            packed, state = bnb.quantize_4bit(module.weight.data, compress_statistics=True, quant_type="nf4")
            module.weight.data.copy_(bnb.dequantize_4bit(packed, state))


def load_merged_base(model_cfg: DictConfig, tokenizer: Any, accelerator: str = "auto") -> torch.nn.Module:
    """The base in 16-bit on the GPU (the config's dtype on the CPU, the tiny model its own), as training saw it.

    ``accelerator`` is the hardware group's: ``cpu`` keeps it on the CPU where a GPU is present too."""
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    model = get_backend(model_cfg.backend).load_base(
        model_cfg, tokenizer, dtype=torch.bfloat16 if on_gpu else None, quantize=False
    )
    if on_gpu and model.device.type == "cpu":
        model = model.to("cuda")
    if model_cfg.get("load_in_4bit"):
        _round_trip_nf4(model)
    return model.eval()


@contextmanager
def merged(model: torch.nn.Module, adapter_path: str) -> Iterator[torch.nn.Module]:
    """``model`` with the adapter at ``adapter_path`` merged into its weights; restored on exit."""
    config = LoraConfig.from_pretrained(adapter_path)
    if config.modules_to_save:  # whole modules replaced: nothing here would restore them
        raise ModelLoadError(
            f"{adapter_path} trains whole modules too ({config.modules_to_save}); score it with engine=peft"
        )
    pristine: dict[str, torch.Tensor] = {}
    peft_model = PeftModel.from_pretrained(model, adapter_path, is_trainable=False)
    try:
        for name, module in peft_model.base_model.model.named_modules():
            base_layer = getattr(module, "base_layer", None)
            if isinstance(base_layer, torch.nn.Linear):
                pristine[name] = base_layer.weight.detach().to("cpu", copy=True)
        yield peft_model.merge_and_unload().eval()  # in place: the weights keep their storage
    finally:
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, weight in pristine.items():
                modules[name].weight.copy_(weight)


def each_merged_model(
    model_cfg: DictConfig, tokenizer: Any, adapters: list[str], include_base: bool = True, accelerator: str = "auto"
) -> Iterator[tuple[str | None, torch.nn.Module]]:
    """``(adapter, model)`` for the base (adapter None; unless ``include_base`` is false and adapters are given),
    then each adapter.

    One model object serves all: the step that yields it must be done with it before the next.
    """
    model = load_merged_base(model_cfg, tokenizer, accelerator)
    if include_base or not adapters:
        yield None, model
    for path in adapters:
        with merged(model, path) as with_adapter:
            yield path, with_adapter
