"""Marks for tests of an optional extra: skipped, with the command that installs it, where it is missing."""

from __future__ import annotations

import importlib.util

import pytest


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing (no Hydra plugin at all)
        return False


def _needs(module: str, extra: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not _installed(module), reason=f"the {extra} extra: pip install -e '.[{extra}]'")


needs_optuna = _needs("hydra_plugins.hydra_optuna_sweeper", "optuna")
needs_slurm = _needs("hydra_plugins.hydra_submitit_launcher", "slurm")
needs_wandb = _needs("wandb", "wandb")
needs_lmeval = _needs("lm_eval", "lmeval")
