"""Rules on the files, folders and environment a config names: they exist and are of the right kind.

Each is checked with the other config rules (``medllm.config.checks``), before any data or model is
loaded, and is the only definition of its rule: the layers that later read the input call the same
function where they can be used without a config check (a data module built from Python, an export).

What an input holds is checked where it is read, also before any model loads; ``INPUT_RULES`` names
every rule on an input and where it lives, so that a reader finds each in one place.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from medllm.errors import ConfigError

INPUT_RULES = {
    "data.path, data.test_path": "a file (rows_file, here); data=local needs one; the two differ (data_files, here)",
    "data.path rows": "readable UTF-8 rows, each field present and text (medllm.data.rows.check_data)",
    "ckpt_path": "a .ckpt file or auto (checkpoint_file, here); its record fits the config "
    "(medllm.training.resume.check_resumable)",
    "hydra.run.dir, paths.output_dir": "writable (writable_dir, here); holds no other run or evaluation, is in "
    "use by no other command (medllm.runs.guards)",
    "benchmark.path": "exists (benchmark_path, here); its items are well formed (medllm.tasks.benchmarks)",
    "suite.data_dir": "a folder (suite_data_dir, here); each copy in it well formed (medllm.tasks.suites)",
    "resume=true, hydra.run.dir": "an evaluation of the same settings (medllm.evaluation.predictions.check_resume)",
    "adapter_path, adapters, sweep_dir": "adapter folders whose config and weights open (find_adapters, here)",
    "export.llama_cpp_dir": "llama.cpp built with llama-quantize, with export.gguf (find_llama_cpp, here)",
    "MEDLLM_MEMORY_CAP_GIB": "a positive number of GiB (memory_cap_gib, here)",
    "data.path (stage=grpo)": "a file or PubMedQA's folder (problems_path, here); each row a problem with a checkable "
    "answer (medllm.tasks.problems)",
    "init_adapter": "an adapter folder (find_adapters, here) of this base and LoRA shape "
    "(medllm.workflows.inputs.check_init_adapter)",
    "stage.rewards.*.fn._target_": "an importable callable (importable, here)",
}

LOCAL_NEEDS_PATH = "data=local needs data.path=<a .json, .jsonl, .parquet or .csv file>."
CAP_VARIABLE = "MEDLLM_MEMORY_CAP_GIB"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # what PEFT saves


def rows_file(key: str, value: Any) -> Path:
    """The file of rows that ``key`` names (``data.path``, ``data.test_path``)."""
    file = Path(str(value)).expanduser()
    if file.is_dir():
        raise ConfigError(f"{key}={value} is a folder; {key} takes one file of rows.")
    if not file.is_file():
        raise ConfigError(f"{key}={value}: no such file. Point {key} at a .json, .jsonl, .parquet or .csv file.")
    return file


def data_files(data: Mapping[str, Any], needed: str = LOCAL_NEEDS_PATH) -> None:
    """``data.path`` a file where the rows are local (``needed``: the message where it is missing), and
    ``data.test_path`` another file than it."""
    path, test_path = _given(data, "path"), _given(data, "test_path")
    local = data.get("source") == "local"
    if local:
        if not path:
            raise ConfigError(needed)
        rows_file("data.path", path)
    if local and test_path and _resolved(test_path) == _resolved(path):
        raise ConfigError(
            f"data.test_path={test_path} is data.path: the test rows would be the rows trained on. Give a file of "
            "held-out rows, or leave data.test_path out (data.val_size holds rows out of data.path)."
        )


def _given(node: Mapping[str, Any], key: str) -> Any:
    """``node[key]``; None where it is left out or ``???``."""
    return None if OmegaConf.is_config(node) and OmegaConf.is_missing(node, key) else node.get(key)


def _resolved(path: Any) -> Path:
    return Path(str(path)).expanduser().resolve()


def checkpoint_file(ckpt_path: Any) -> None:
    """``ckpt_path``: null, auto, or a checkpoint file."""
    if ckpt_path not in (None, "auto") and not os.path.isfile(str(ckpt_path)):
        what = "a folder" if os.path.isdir(str(ckpt_path)) else "no such checkpoint"
        raise ConfigError(f"ckpt_path={ckpt_path}: {what}; give a .ckpt file, or ckpt_path=auto.")


def benchmark_path(path: Any) -> None:
    if path is not None and not Path(str(path)).expanduser().exists():
        raise ConfigError(f"benchmark.path={path}: no such file or folder.")


def suite_data_dir(path: Any) -> None:
    """``suite.data_dir``: null, or a folder (a benchmark missing from it comes from the hub)."""
    if path is not None and not Path(str(path)).expanduser().is_dir():
        raise ConfigError(f"suite.data_dir={path}: no such folder; give the one holding medqa/, medmcqa/, mmlu/, ...")


def problems_path(path: Any) -> None:
    """``data.path`` of problems: a file, or a folder (PubMedQA's)."""
    if not Path(str(path)).expanduser().exists():
        raise ConfigError(f"data.path={path}: no such file or folder.")


def importable(key: str, target: Any) -> None:
    """A ``_target_`` that names something Python can import, said before any model loads. (Not Hydra's
    ``get_object``, which also logs its own error message.)"""
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{key}={target} must name a callable, e.g. my_rewards.length_reward")
    module, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name) if module else None
    except AttributeError:
        raise ConfigError(f"{key}={target}: module {module} has no {name!r}") from None
    except Exception as err:  # ImportError, or whatever the module raises as it is imported
        raise ConfigError(f"{key}={target} can't be imported ({type(err).__name__}: {err})") from None
    if not callable(found):
        raise ConfigError(f"{key}={target} is not a callable module.name (a function or a class)")


def writable_dir(out_dir: Path) -> None:
    """``paths.output_dir``: a folder this process may create files in (or create, with its parents)."""
    path = Path(out_dir).resolve()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    writable = existing is not None and existing.is_dir()
    if writable:
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError:
            writable = False
    if not writable:
        raise ConfigError(f"paths.output_dir={out_dir} is not writable; set hydra.run.dir=<a writable folder>.")


def find_llama_cpp(folder: str | Path) -> Path:
    """The llama.cpp folder holding ``llama-quantize`` (``export.llama_cpp_dir``, else on PATH)."""
    folder = Path(folder).expanduser()
    if (folder / "llama-quantize").is_file() or (folder / "build" / "bin" / "llama-quantize").is_file():
        return folder
    on_path = shutil.which("llama-quantize")
    if on_path:
        return Path(on_path).parent
    raise ConfigError(
        f"GGUF export needs llama.cpp built with llama-quantize, found neither in export.llama_cpp_dir={folder} nor "
        "on PATH. Build it (git clone https://github.com/ggml-org/llama.cpp && cmake -B build llama.cpp && "
        "cmake --build build --target llama-quantize) and set export.llama_cpp_dir, or drop export.gguf."
    )


def memory_cap_gib() -> float | None:
    """``MEDLLM_MEMORY_CAP_GIB``: the GPU memory, in GiB, that planning assumes at most; None when unset."""
    value = os.environ.get(CAP_VARIABLE, "").strip()
    if not value:
        return None
    try:
        cap = float(value)
    except ValueError:
        cap = math.nan
    if not cap > 0 or math.isinf(cap):
        raise ConfigError(f"{CAP_VARIABLE}={value!r} must be a positive number of GiB (e.g. 24), or unset")
    return cap


def _why_no_adapter(given: Path, folder: Path) -> str:
    """Why ``folder`` holds no adapter, and what to pass instead: the run dir, a run still training, nothing."""
    if (folder / "adapter" / ADAPTER_CONFIG).is_file():
        return f"not an adapter folder (no {ADAPTER_CONFIG}); it is a run dir: pass {given / 'adapter'}."
    run = folder.parent if folder.name == "adapter" else folder
    if not folder.exists() and not run.exists():
        return "no such folder (deleted, or a typo?). Pass the <run dir>/adapter folder that train.py saved."
    checkpoints = sorted((run / "checkpoints").glob("*.ckpt")) if (run / "checkpoints").is_dir() else []
    if checkpoints and not (run / "summary.json").is_file():
        return (
            f"no adapter yet: {run} is a run still training, or stopped before its end (its newest checkpoint: "
            f"{checkpoints[-1].name}). Evaluate it once it has finished, or resume it: python train.py "
            f"hydra.run.dir={run} ckpt_path=auto."
        )
    return f"not an adapter folder (no {ADAPTER_CONFIG}). Pass the <run dir>/adapter folder that train.py saved."


def find_adapters(
    adapter_path: str | None = None, adapters: list[str] | None = None, sweep_dir: str | None = None
) -> list[str]:
    """The adapter folders an evaluation scores, in the order given, each once; every one must hold an adapter.

    ``sweep_dir`` adds every ``<sweep_dir>/*/adapter``, job folders in numeric order (0, 1, ..., 10).
    """
    paths = ([adapter_path] if adapter_path else []) + [str(p) for p in adapters or []]
    if sweep_dir:
        root = Path(sweep_dir).expanduser()
        if not root.is_dir():
            raise ConfigError(f"sweep_dir={sweep_dir}: no such folder")
        found = sorted(
            root.glob("*/adapter"),
            key=lambda p: (not p.parent.name.isdigit(), int(p.parent.name) if p.parent.name.isdigit() else 0, p.name),
        )
        found = [p for p in found if (p / ADAPTER_CONFIG).is_file()]
        if not found:
            raise ConfigError(f"sweep_dir={sweep_dir}: no <job>/adapter folder with an {ADAPTER_CONFIG} in it")
        paths += [str(p) for p in found]
    unique, seen = [], set()
    for path in paths:
        key = Path(path).expanduser().resolve()
        if key in seen:
            continue
        seen.add(key)
        if not (key / ADAPTER_CONFIG).is_file():
            raise ConfigError(f"{path}: {_why_no_adapter(Path(path), key)}")
        if not any((key / name).is_file() for name in ADAPTER_WEIGHTS):  # found now, not after the base is scored
            raise ConfigError(f"{path}: an adapter folder without weights (no {' or '.join(ADAPTER_WEIGHTS)}).")
        _check_readable(Path(path))
        unique.append(path)
    return unique


def _check_readable(folder: Path) -> None:
    """The adapter's config parses and its safetensors weights open (header and sizes; no tensor is read):
    a truncated copy fails here, not after the models before it were scored."""
    config = folder / ADAPTER_CONFIG
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{config}: not a readable adapter config ({err}).") from None
    if not isinstance(settings, dict) or "r" not in settings:
        raise ConfigError(f"{config}: not a LoRA adapter config (no 'r').")
    weights = folder / ADAPTER_WEIGHTS[0]
    if not weights.is_file():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="numpy") as f:
            shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # safetensors raises its own error types, all meaning an unreadable file
        raise ConfigError(f"{weights}: unreadable adapter weights ({err}); copy the adapter again.") from None
    ranks = {shape[0] for name, shape in shapes.items() if "lora_A" in name and len(shape) == 2}
    if ranks and ranks != {settings["r"]} and not settings.get("rank_pattern"):
        raise ConfigError(
            f"{folder}: its weights have LoRA rank(s) {sorted(ranks)} but {ADAPTER_CONFIG} says r={settings['r']}: "
            "the weights and the config come from different adapters."
        )
