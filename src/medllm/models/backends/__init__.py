"""Model backends, chosen by ``model.backend``: each is the module of that name in this package.

A backend loads the tokenizer, the base and the LoRA-wrapped model, and sets its models up for
generation. Adding one is a module here that defines ``BACKEND`` and a conf/model file that names it:
the schema lists this package's modules as ``model.backend``'s choices (``medllm.config.schema``), and
the entry points' early import and every loader ask this registry. What a model config must hold for a
backend is a config rule (``medllm.config.checks.check_model_config``).

Nothing heavy is imported when a backend module is: train.py picks the backend before transformers
may be imported (Unsloth patches transformers and peft as it is imported), and the config checks list
the backends in the time it takes to start Python.
"""

from __future__ import annotations

import importlib
import sys
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from medllm.config.schema import backend_names
from medllm.errors import MedllmError

if TYPE_CHECKING:
    from omegaconf import DictConfig


class ModelLoadError(MedllmError, RuntimeError):
    """The model or tokenizer could not be loaded; the message says what to do."""


class UnknownBackendError(MedllmError, ValueError):
    """``model.backend`` names no module of this package."""


class Backend(ABC):
    """What the rest of medllm asks of a backend; ``model_cfg`` is the composed ``model`` config group.

    ``prepare`` and ``for_inference`` are hooks that do nothing unless a backend needs them.
    """

    name: str

    def prepare(self) -> None:  # noqa: B027
        """What must happen before transformers and peft are imported (train.py and eval.py call it first)."""

    def in_this_process(self) -> Backend:
        """The backend that loads this one's weights in this process: itself, or a stand-in where ``prepare``
        did not run before transformers was imported (eval.py prepares only where the model runs as trained)."""
        return self

    @abstractmethod
    def load_tokenizer(self, model_cfg: DictConfig) -> Any: ...

    @abstractmethod
    def base_config(self, model_cfg: DictConfig) -> Any:
        """The base model's transformers config, without loading its weights."""

    @abstractmethod
    def load_base(self, model_cfg: DictConfig, tokenizer: Any, dtype: Any = None, quantize: bool | None = None) -> Any:
        """The base as a plain transformers model (what merges and exports start from): in ``dtype`` (the
        config's when None), 4-bit when ``quantize`` (``model.load_in_4bit`` when None)."""

    @abstractmethod
    def load_model(
        self,
        model_cfg: DictConfig,
        tokenizer: Any,
        adapter_path: str | None = None,
        trainable: bool = True,
        seed: int = 0,
        tokens_per_batch: int | None = None,
    ) -> Any:
        """The base with a LoRA adapter: a new one (training, drawn with ``seed``) or the one saved at ``adapter_path``.

        ``tokens_per_batch`` (the largest micro-batch) lets ``gradient_checkpointing=auto`` decide. The
        returned model carries ``checkpointing_plan``: what was decided and why."""

    def for_inference(self, model: Any) -> None:  # noqa: B027
        """Set ``model`` up for generation (after it is on its device)."""


def get_backend(name: str) -> Backend:
    """The backend ``model.backend=name`` chooses; an unknown name is a one-line error listing the known ones."""
    if name not in backend_names():
        known = " | ".join(backend_names())
        raise UnknownBackendError(f"model.backend={name} is not a backend; the registered ones are {known}")
    return importlib.import_module(f"{__name__}.{name}").BACKEND


def prepare_backend(name: str | None) -> None:
    """The backend's early imports (Unsloth patches transformers, peft and trl as it is imported); none for None.

    Exits with a one-line message where the backend can't start here (Unsloth needs an NVIDIA GPU).
    """
    if name is None:
        return
    try:
        get_backend(name).prepare()
    except MedllmError as err:
        sys.exit(f"error: {err}")
