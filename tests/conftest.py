"""Shared fixtures: offline hub, offline W&B, the tiny tokenizer and model, composed configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session prepares data into its own cache, never the user's."""
    monkeypatch.setenv("MEDLLM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "medllm-cache"))


def compose_train(*overrides: str, config_name: str = "train"):
    """The real train.yaml composed with overrides, with Hydra's run dir resolved."""
    from medllm.resolvers import register

    register()  # as train.py does before Hydra composes
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=True)


@pytest.fixture(scope="session")
def tokenizer():
    from medllm.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


def run_train(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python train.py <overrides>`` as a user runs it, offline, from the repository root."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "train.py", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=600,
    )


def mark_adapter(folder: Path) -> Path:
    """The two files that make a folder an adapter to eval.py's adapter search: a LoRA config and weights that
    open (rank 2, one tensor); no model is built from them."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 2}')
    save_file({"q_proj.lora_A.weight": torch.zeros(2, 4)}, folder / "adapter_model.safetensors")
    return folder
