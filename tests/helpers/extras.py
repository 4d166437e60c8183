"""Marks for tests of an optional extra: skipped, with the command that installs it, where it is missing."""

from __future__ import annotations

import importlib.util

import pytest


def _needs(module: str, extra: str) -> pytest.MarkDecorator:
    missing = importlib.util.find_spec(module) is None
    return pytest.mark.skipif(missing, reason=f"the {extra} extra: pip install -e '.[{extra}]'")


needs_optuna = _needs("hydra_plugins.hydra_optuna_sweeper", "optuna")
needs_slurm = _needs("hydra_plugins.hydra_submitit_launcher", "slurm")
needs_wandb = _needs("wandb", "wandb")
