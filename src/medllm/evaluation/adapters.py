"""Which adapter folders an evaluation scores. Imports stay light: eval.py lists them before it picks the backend."""

from __future__ import annotations

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
        unique.append(path)
    return unique
