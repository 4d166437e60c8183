"""conf/ where no Hydra app is running: a test, ``train()`` called from Python, the evaluation after training.

The package carries conf/ as ``medllm/conf`` (in a checkout, a link to the repository's conf/; in an
installed wheel, a copy), so configs compose the same from any working directory and any install.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_config(name: str, overrides: Sequence[str], return_hydra_config: bool = False) -> DictConfig:
    """conf/<name>.yaml with ``overrides``: inside a running Hydra app (train.py's) from its config path, else
    from the package's conf/."""
    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=return_hydra_config)
