"""What a run leaves in its folder, and what another command may do with a folder that holds one.

A training run's dir holds ``.hydra/`` (its config, secrets redacted), ``checkpoints/``, ``csv/`` or
``wandb/`` logs, ``adapter/`` (the PEFT weights, the tokenizer and the run record, ``medllm_run.json``),
``summary.json`` once it finished, and ``eval/`` when it scored its adapter. An evaluation's dir holds
its report files (or ``answers.jsonl``) and ``.hydra/``. :class:`RunDir` names them; ``plan`` says whether
a training run may start, resume or skip in a folder, ``check_eval_dir`` whether an evaluation may write
into one. Nothing here writes over another run's files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medllm.errors import ConfigError
from medllm.runs.atomic import write_atomically

HYDRA_DIR = ".hydra"
SUMMARY = "summary.json"
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
# What a run leaves in its dir; any of them present means the dir holds a run. (train.log is not among
# them: Hydra creates it for every job, this one too, before the guard runs.)
RUN_TRACES = (HYDRA_DIR, SUMMARY, CHECKPOINTS, ADAPTER, "csv", "wandb", "merged_16bit", "gguf")
# What an evaluation leaves in its dir; any of them there means the dir holds an evaluation.
REPORT_FILES = ("report.json", "report.md", "predictions.jsonl", "report.png")
ANSWERS = "answers.jsonl"  # mode=generate's answers
FRESH, RESUME, FINISHED = "fresh", "resume", "finished"


class RunDirError(ConfigError):
    """The folder a setting names (``hydra.run.dir``, ...) holds another run that this command must not overwrite."""


@dataclass(frozen=True)
class RunDir:
    """A training run's folder."""

    path: Path

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    @property
    def eval_dir(self) -> Path:
        """Where ``eval_after_training`` writes its report."""
        return self.path / "eval"

    def traces(self) -> list[str]:
        """The names of a run's files and folders found here (empty folders don't count)."""
        found = []
        for name in RUN_TRACES:
            path = self.path / name
            if path.is_file() or (path.is_dir() and any(path.iterdir())):
                found.append(name)
        return found

    def trained_traces(self) -> list[str]:
        """``traces`` but ``.hydra``, which a run that stopped before training (a typo, a bad row) leaves alone."""
        return [name for name in self.traces() if name != HYDRA_DIR]

    def plan(self, ckpt_path: Any, key: str = "hydra.run.dir") -> str:
        """fresh | resume | finished: what a run with this ``ckpt_path`` does here; RunDirError if it would
        overwrite another run. ``key``: the setting that chose the folder, for the error."""
        traces = self.traces()
        if traces in ([], [HYDRA_DIR]):  # only the config of a run that stopped before training (a typo, a bad row)
            return FRESH
        if self.summary_file.is_file():
            if ckpt_path == "auto":
                return FINISHED
            raise RunDirError(
                f"{self.path} holds a finished run ({SUMMARY}); choose another {key} (to train on from it: "
                f"ckpt_path={self.path / CHECKPOINTS / LAST_CHECKPOINT} {key}=<new dir>)."
            )
        inside = ckpt_path and Path(str(ckpt_path)).expanduser().resolve().is_relative_to(self.path.resolve())
        if ckpt_path == "auto" or inside:
            return RESUME
        raise RunDirError(
            f"{self.path} already holds a run ({', '.join(traces)}); resume it with ckpt_path=auto, or choose another "
            f"{key}."
        )

    def read_summary(self) -> dict[str, Any] | None:
        """The run's summary.json; None before the run finished."""
        return json.loads(self.summary_file.read_text()) if self.summary_file.is_file() else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_atomically(self.summary_file, json.dumps(summary, indent=2))


def check_eval_dir(out_dir: Path, resume: bool = False) -> None:
    """RunDirError where an evaluation into ``out_dir`` would write over another's results or a training run.
    ``resume``: an evaluation's own folder is continued (its settings are checked once its items are known)."""
    held = [name for name in (*REPORT_FILES, ANSWERS) if (out_dir / name).exists()]
    if resume and ANSWERS not in held:
        held = []
    if held:
        hint = "" if ANSWERS in held else " (to continue it: the same command with resume=true)"
        held_text = ", ".join(held)
        raise RunDirError(f"{out_dir} holds an evaluation already ({held_text}){hint}; choose another hydra.run.dir.")
    training = RunDir(out_dir).trained_traces()
    if training:
        raise RunDirError(
            f"{out_dir} holds a training run ({', '.join(training)}); an evaluation goes into a folder of its own: "
            "choose another hydra.run.dir."
        )


def checkpoint_dir(cfg: DictConfig, run_dir: Path) -> Path:
    """Where the run writes its checkpoints: its ModelCheckpoint callback's ``dirpath``, else <run>/checkpoints."""
    for callback in (cfg.get("callbacks") or {}).values():
        if callback and str(callback.get("_target_", "")).endswith("ModelCheckpoint") and callback.get("dirpath"):
            return Path(callback.dirpath)
    return run_dir / CHECKPOINTS


def result_dirs(config: DictConfig, run_dir: Path) -> dict[str, Path]:
    """The folders other than the run dir that this run writes results into, by the setting that names them."""
    named = {"paths.output_dir": config.get("paths", {}).get("output_dir")}
    logger = config.get("logger")
    if logger and logger.get("save_dir"):
        named["logger.save_dir"] = logger.save_dir
    # Locked like the others: two runs given one checkpoint folder at once would write over each other's
    # last.ckpt (a folder holding another run's checkpoints is refused when the run looks for one to resume).
    named["callbacks.checkpoint.dirpath"] = checkpoint_dir(config, run_dir)
    dirs: dict[str, Path] = {}
    seen = {run_dir.resolve()}
    for key, value in named.items():
        path = Path(str(value)).expanduser() if value else None
        if path is not None and path.resolve() not in seen:
            seen.add(path.resolve())
            dirs[key] = path
    return dirs
