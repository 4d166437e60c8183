"""Which adapter folders an evaluation scores. Imports stay light: eval.py lists them before it picks the backend."""

from __future__ import annotations

import json
from pathlib import Path

from medllm.errors import MedllmError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # what PEFT saves


class EvalConfigError(MedllmError, ValueError):
    """An eval.yaml setting that can't work; the message says which and how to fix it."""


def find_adapters(
    adapter_path: str | None = None, adapters: list[str] | None = None, sweep_dir: str | None = None
) -> list[str]:
    """The adapter folders to evaluate, in the order given, each once; every one must hold an adapter.

    ``sweep_dir`` adds every ``<sweep_dir>/*/adapter``, job folders in numeric order (0, 1, ..., 10).
    """
    paths = ([adapter_path] if adapter_path else []) + [str(p) for p in adapters or []]
    if sweep_dir:
        root = Path(sweep_dir).expanduser()
        if not root.is_dir():
            raise EvalConfigError(f"sweep_dir={sweep_dir}: no such folder")
        found = sorted(
            root.glob("*/adapter"),
            key=lambda p: (not p.parent.name.isdigit(), int(p.parent.name) if p.parent.name.isdigit() else 0, p.name),
        )
        found = [p for p in found if (p / ADAPTER_CONFIG).is_file()]
        if not found:
            raise EvalConfigError(f"sweep_dir={sweep_dir}: no <job>/adapter folder with an {ADAPTER_CONFIG} in it")
        paths += [str(p) for p in found]
    unique, seen = [], set()
    for path in paths:
        key = Path(path).expanduser().resolve()
        if key in seen:
            continue
        seen.add(key)
        if not (key / ADAPTER_CONFIG).is_file():
            hint = (
                f"It is a run dir: pass {Path(path) / 'adapter'}."
                if (key / "adapter" / ADAPTER_CONFIG).is_file()
                else "Pass the <run dir>/adapter folder that train.py saved."
            )
            raise EvalConfigError(f"{path}: not an adapter folder (no {ADAPTER_CONFIG}). {hint}")
        if not any((key / name).is_file() for name in ADAPTER_WEIGHTS):  # found now, not after the base is scored
            raise EvalConfigError(f"{path}: an adapter folder without weights (no {' or '.join(ADAPTER_WEIGHTS)}).")
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
        raise EvalConfigError(f"{config}: not a readable adapter config ({err}).") from None
    if not isinstance(settings, dict) or "r" not in settings:
        raise EvalConfigError(f"{config}: not a LoRA adapter config (no 'r').")
    weights = folder / ADAPTER_WEIGHTS[0]
    if not weights.is_file():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="numpy") as f:
            shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # safetensors raises its own error types, all meaning an unreadable file
        raise EvalConfigError(f"{weights}: unreadable adapter weights ({err}); copy the adapter again.") from None
    ranks = {shape[0] for name, shape in shapes.items() if "lora_A" in name and len(shape) == 2}
    if ranks and ranks != {settings["r"]} and not settings.get("rank_pattern"):
        raise EvalConfigError(
            f"{folder}: its weights have LoRA rank(s) {sorted(ranks)} but {ADAPTER_CONFIG} says r={settings['r']}: "
            "the weights and the config come from different adapters."
        )
