"""The fixtures every test directory uses (tests/ and bench/tests/ import them into their conftest.py): an
offline hub, offline W&B, a prepared-data cache of the session's own, the tiny tokenizer; one thread a worker
where pytest-xdist spreads the tests over processes."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Tests spread over pytest-xdist's workers, one a core: a worker (and the processes it starts) computes on one
    # thread. Two workers of two OpenMP threads on two cores spin in each other's way, up to 30x slower.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Each test session prepares data into its own cache, never the user's (from its first fixture on)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDLLM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "medllm-cache"))
        yield


@pytest.fixture(scope="session")
def tokenizer():
    from medllm.models.tiny import tiny_tokenizer

    return tiny_tokenizer()
