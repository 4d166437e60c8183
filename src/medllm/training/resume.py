"""Resuming: checkpoints that say what made them, checked before the model loads.

Every checkpoint train.py writes carries the run record (``medllm.runs.record``) under ``medllm``: the
base model, the LoRA shape, the resolved config (secrets redacted), the chat format and the data split.
Before a resume loads any weight, the checkpoint is read and checked: readable (a truncated or foreign
file is named in one line), a medllm checkpoint, the same base and LoRA shape as the config, and the
same settings where a change would silently not apply or would change what is trained (the optimizer's
state keeps its old learning rate, a new batch size or data split changes the data order).
``trainer.max_steps`` / ``max_epochs`` may change: the run then trains to the new end, with the
learning-rate schedule stretched to it.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig

from medllm.config.resolvers import configured
from medllm.errors import MedllmError
from medllm.runs.layout import LAST_CHECKPOINT
from medllm.runs.record import RECORD_FORMAT, RunRecord, base_model, lora_shape

log = logging.getLogger(__name__)

RECORD_KEY = "medllm"
WORLD_SIZE_KEY = "medllm_world_size"  # the processes that trained it
# Settings a resume must share with its checkpoint (prefixes of dotted keys of the resolved config).
SAME_ON_RESUME = (
    "seed",
    "max_seq_length",
    "stage",
    "init_adapter",
    "optimizer",
    "scheduler",
    "data",
    "model.lora",
    "model.load_in_4bit",
    "model.dtype",
    "trainer.accumulate_grad_batches",
    "trainer.gradient_clip_val",
)
# ...except these, which change how fast data is prepared or how batches are padded, not what is trained.
FREE_ON_RESUME = (
    "data.num_workers",
    "data.num_proc",
    "data.cache_dir",
    "data.eval_batch_size",
    "data.pad_to_multiple_of",
    "data.packed_static_shape",
    "data.phi_check",
    "stage.micro_batch_size",  # the step's loss is the same in any split (tests/integration/test_grpo.py)
    "stage.log_completions_every",
    "stage.contamination",
)


class CheckpointError(MedllmError):
    """A checkpoint that can't be resumed from with this config; the message names the file."""


class RecordInCheckpoints(L.Callback):
    """Puts the run record into every checkpoint (step checkpoints, last.ckpt, the final save)."""

    def __init__(self, record: RunRecord):
        self.record = record

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[RECORD_KEY] = self.record.as_dict()
        checkpoint[WORLD_SIZE_KEY] = trainer.world_size

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """The data order is a position in global batches of ``batch_size x processes``: resumed with another
        number of processes, rows would be skipped or repeated and the effective batch would change."""
        change = _process_change(checkpoint.get(WORLD_SIZE_KEY), trainer.world_size)
        if change:
            raise CheckpointError(change)


def _process_change(saved: int | None, now: int | None) -> str | None:
    """Why a checkpoint of ``saved`` processes can't be resumed by ``now``; None where it can (or is unknown)."""
    if saved is None or now is None or saved == now:
        return None
    return (
        f"the checkpoint was trained by {saved} process(es), this run has {now}: the data order and the effective "
        f"batch would change. Resume with {saved}, or start over in another hydra.run.dir."
    )


def configured_processes(cfg: DictConfig) -> int | None:
    """The processes the run's trainer settings ask for (nodes x devices); None where Lightning decides."""
    nodes, devices = configured(cfg.trainer).values()
    if isinstance(devices, int) and isinstance(nodes, int) and devices > 0 and nodes > 0:
        return devices * nodes
    return None


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    global_step: int
    record: RunRecord
    world_size: int | None = None  # the processes that trained it (None: an older checkpoint)


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint's step and record; CheckpointError, naming the file, if it is unreadable or not medllm's."""
    try:
        # mmap: the weights are not read, only the file's index and the small objects.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        try:  # not a zip-format torch file (which mmap needs), or a damaged one: this load says which
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(
                f"{path}: not a readable checkpoint ({Path(path).stat().st_size} bytes: truncated, damaged or not a "
                f"torch file; torch says: {reason})."
            ) from None
    record = checkpoint.get(RECORD_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise CheckpointError(
            f"{path}: not a medllm checkpoint (no '{RECORD_KEY}' record); train.py resumes only its own."
        )
    return Checkpoint(
        path=Path(path),
        global_step=int(checkpoint.get("global_step", 0)),
        record=RunRecord.from_dict(record),
        world_size=checkpoint.get(WORLD_SIZE_KEY),
    )


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def _compared(key: str) -> bool:
    def under(prefixes: tuple[str, ...]) -> bool:
        return any(key == p or key.startswith(f"{p}.") for p in prefixes)

    return under(SAME_ON_RESUME) and not under(FREE_ON_RESUME)


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for each dotted key whose value differs."""
    old_flat, new_flat = _flatten(old, prefix), _flatten(new, prefix)
    missing = "(unset)"
    return [
        f"{key}: {old_flat.get(key, missing)} -> {new_flat.get(key, missing)}"
        for key in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(key, missing) != new_flat.get(key, missing)
    ]


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each setting a resume must keep that differs."""
    return [change for change in _differences(old, new) if _compared(change.split(":", 1)[0])]


def record_differences(record: RunRecord, cfg: DictConfig) -> list[str]:
    """``key: recorded -> now`` for the base, the LoRA shape and every setting a run is defined by."""
    now = RunRecord.of_config(cfg)
    return [
        *_differences(record.base_model, now.base_model, "model."),
        *_differences(record.lora, now.lora, "model.lora."),
        *config_changes(record.config, now.config),
    ]


def check_resumable(checkpoint: Checkpoint, cfg: DictConfig) -> None:
    """CheckpointError unless the checkpoint was trained on this base, with this LoRA shape and settings."""
    record, path = checkpoint.record, checkpoint.path
    changes = _differences(record.base_model, base_model(cfg.model), "model.")
    if changes:
        raise CheckpointError(
            f"{path} was trained on another base model ({'; '.join(changes)}); resume with the checkpoint's."
        )
    changes = _differences(record.lora, lora_shape(cfg.model.lora), "model.lora.")
    if changes:
        raise CheckpointError(
            f"{path} holds a LoRA adapter of another shape ({'; '.join(changes)}); resume with the checkpoint's."
        )
    # Here, before any model loads; Lightning's restore checks it again (RunRecord.on_load_checkpoint).
    change = _process_change(checkpoint.world_size, configured_processes(cfg))
    if change:
        raise CheckpointError(f"{path}: {change}")
    changes = config_changes(record.config, RunRecord.of_config(cfg).config)
    if changes:
        raise CheckpointError(
            f"{path} was trained with other settings ({'; '.join(changes)}): a resume would not apply them or "
            "would change what is trained. Resume with the checkpoint's values, or start over in another hydra.run.dir."
        )


def check_same_rows(checkpoint: Checkpoint, record: RunRecord) -> None:
    """CheckpointError unless the rows (and their chat format) are those the checkpoint trained on: a data
    file edited in place keeps every setting a resume compares, not what is trained."""
    changes = [
        *_differences(checkpoint.record.data_split, record.data_split, "rows of "),
        *_differences(checkpoint.record.chat_format, record.chat_format, "chat format "),
    ]
    if changes:
        raise CheckpointError(
            f"{checkpoint.path} was trained on other rows ({'; '.join(changes)}): the data changed since. Resume "
            "with the rows it trained on, or start over in another hydra.run.dir."
        )


def _loadable(candidates: list[Path]) -> list[Checkpoint]:
    loadable = []
    for path in candidates:
        try:
            loadable.append(read_checkpoint(path))
        except CheckpointError as err:
            log.warning("skipping %s", err)
    return loadable


def _refuse_other_runs(checkpoint_dir: Path, run_dir: Path, checkpoints: list[Checkpoint]) -> None:
    """A checkpoint folder outside the run dir (``callbacks.checkpoint.dirpath``) may be another run's too:
    this run would write its last.ckpt over theirs. CheckpointError when it holds another run dir's
    (``run_dir`` resolved)."""
    others = sorted(
        {
            str(recorded)
            for c in checkpoints
            if (recorded := c.record.config.get("paths", {}).get("output_dir"))
            and Path(str(recorded)).expanduser().resolve() != run_dir
        }
    )
    if others:
        raise CheckpointError(
            f"{checkpoint_dir} holds checkpoints of the run in {others[0]}, which this run would write over: resume "
            f"that run there (hydra.run.dir={others[0]} ckpt_path=auto), or give this run a "
            "callbacks.checkpoint.dirpath of its own."
        )


def find_checkpoint(ckpt_path: str | None, checkpoint_dir: Path, run_dir: Path | None = None) -> Checkpoint | None:
    """The checkpoint to resume from: ``ckpt_path`` itself, or for ``auto`` the *loadable* one in
    ``checkpoint_dir`` with the most steps (unreadable ones skipped with a warning; last.ckpt first among
    equals, being written after a step's); None: start fresh. Steps, not file times, which a copy of the run
    dir may not keep. A fresh start into a folder that holds checkpoints is refused: it would write over them;
    so is any start into a folder outside ``run_dir`` that holds another run dir's checkpoints."""
    if ckpt_path is None:
        if any(checkpoint_dir.glob("*.ckpt")):
            raise CheckpointError(
                f"{checkpoint_dir} holds checkpoints of another run, which this one would write over: resume "
                "with ckpt_path=auto, or give callbacks.checkpoint.dirpath a folder of its own."
            )
        return None
    candidates = sorted(checkpoint_dir.glob("*.ckpt"))
    here = run_dir.expanduser().resolve() if run_dir is not None else None
    shared = here is not None and not checkpoint_dir.expanduser().resolve().is_relative_to(here)
    loadable = _loadable(candidates) if ckpt_path == "auto" or (shared and candidates) else []
    if shared:
        _refuse_other_runs(checkpoint_dir, here, loadable)
    if ckpt_path != "auto":
        return read_checkpoint(Path(ckpt_path))
    if loadable:
        checkpoint = max(loadable, key=lambda c: (c.global_step, c.path.name == LAST_CHECKPOINT))
        log.info(
            "ckpt_path=auto: the loadable checkpoint with the most steps is %s (step %d)",
            checkpoint.path,
            checkpoint.global_step,
        )
        return checkpoint
    if candidates:  # starting fresh would write over them: leave that decision to the user
        raise CheckpointError(
            f"ckpt_path=auto: none of the {len(candidates)} checkpoint(s) in {checkpoint_dir} can be loaded (see the "
            "warnings above); give one with ckpt_path=<file>, or start in another hydra.run.dir."
        )
    # A warning: a mistyped hydra.run.dir would otherwise retrain from scratch with only an info line.
    log.warning(
        "ckpt_path=auto: no checkpoint in %s, starting fresh (to resume a run, give its hydra.run.dir)", checkpoint_dir
    )
    return None


def continue_csv_log(logger: Logger | None, step: int) -> None:
    """A resumed run's csv/metrics.csv keeps the rows up to the checkpoint's step and goes on from there.

    Lightning's CSV writer deletes metrics.csv when it starts. So the file is first moved aside (a kill now
    leaves it whole, under its hidden name), the writer started, then the rows written back through a
    temporary file. Rows after ``step`` were logged by steps the resume trains again: they are dropped.
    """
    if not isinstance(logger, CSVLogger):
        return
    path = Path(logger.log_dir) / "metrics.csv"
    kept = path.with_name(".metrics.csv.before-resume")
    if path.is_file():
        os.replace(path, kept)
    if not kept.is_file():
        return
    with warnings.catch_warnings():  # "Previous log files ... will be deleted": this function keeps them
        warnings.filterwarnings("ignore", message=".*Previous log files in this directory will be deleted")
        writer = logger.experiment  # started now: no metrics.csv left for it to delete
    with kept.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [row for row in reader if row.get("step", "").isdigit() and int(row["step"]) <= step]
        fields = list(reader.fieldnames or [])
    tmp = path.with_name(f".metrics.csv.tmp-{os.getpid()}")
    with tmp.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=fields)
        out.writeheader()
        out.writerows(rows)
    os.replace(tmp, path)
    kept.unlink()
    writer.metrics_keys = fields  # new columns are added by the writer, which rewrites the header then
