"""OmegaConf resolvers used by medllm's configs; ``register()`` must run before Hydra composes.

    ${medllm.mul:${model.lora.r},${lora_alpha_ratio}}   # a product: LoRA alpha that follows the rank
    ${medllm.sweep_name:}                               # the sweep dir in a multirun, else null

Light on purpose (OmegaConf and Hydra only): train.py imports it before the backend is chosen, and
Unsloth must be imported before transformers and peft.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def mul(*factors: float) -> int | float:
    """The product of the factors; an int when it is a whole number (LoRA alpha 8, not 8.0)."""
    product: int | float = 1
    for factor in factors:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise TypeError(f"medllm.mul takes numbers, got {factor!r}")
        product *= factor
    return int(product) if isinstance(product, float) and product.is_integer() else product


def sweep_name() -> str | None:
    """Hydra's sweep dir (e.g. multirun/2026-07-01/12-00-00) inside a multirun job, else None: a W&B group
    that gathers the runs of one sweep (``logger.group: ${medllm.sweep_name:}``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return str(hydra_cfg.sweep.dir)


RESOLVERS = {"medllm.mul": mul, "medllm.sweep_name": sweep_name}


def register() -> None:
    """Register medllm's resolvers with OmegaConf; safe to call more than once."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
