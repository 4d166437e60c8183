"""The repository's paths and its real configs, composed as the entry points compose them."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

import medllm.config  # noqa: F401  (registers the resolvers the configs use)

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"


def compose_train(*overrides: str, config_name: str = "train"):
    """The real train.yaml (or ``config_name``) composed with overrides, with Hydra's config returned too."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=True)


def compose_eval(*overrides: str):
    return compose_train(*overrides, config_name="eval")
