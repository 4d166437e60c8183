"""Run dirs are never clobbered, and ``.hydra/`` holds no secrets.

Hydra writes ``.hydra/{config,hydra,overrides}.yaml`` into the run dir inside ``run_job``, before the task
function runs, with the command line's overrides in plain text; and a new run pointed at an old run's dir
(``hydra.run.dir=<old run>``) would replace its files. So train.yaml turns Hydra's own writing off
(``hydra.output_subdir: null``) and registers :class:`RunDirGuard`, a Hydra callback whose
``on_job_start`` runs before anything of the job touches the dir:

* a dir that holds no run: the job starts, and the guard writes ``.hydra/`` with secrets redacted;
* a dir that holds an unfinished run: resumed with ``ckpt_path=auto`` (or a checkpoint inside it), the
  resume's own ``.hydra`` files going to ``.hydra/resume-<n>/`` beside the original ones; otherwise
  refused with a one-line error;
* a dir that holds a finished run (``summary.json``): ``ckpt_path=auto`` says so and changes nothing
  (train.py returns its summary); anything else is refused.

The same holds for every other folder the run writes its results into (``paths.output_dir``, a logger's
``save_dir``, the checkpoint folder) where it is not the run dir. While a job runs, it holds a lock on each
of these folders: a second command started into one of them before the first has written anything is
refused too.

A refused or finished job also detaches Hydra's log file handler for that dir, so not even train.log
grows. Under DDP only rank 0 decides: the other processes run the same command into the same dir,
after rank 0 has written its files, and end with it. A multirun into a sweep dir that already holds
jobs is refused before its first job (unless ``ckpt_path=auto``).

Imports stay light (no torch, transformers or peft): Hydra instantiates callbacks before train.py picks
the backend, and Unsloth must be imported before transformers and peft.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from medllm import resolvers
from medllm.errors import MedllmError
from medllm.training.secrets import redact_argv, redact_log_records, redact_secrets, remember_secrets

# ckpt_path and the run dir hold ${medllm.*}; a remote (submitit) worker imports this module when it unpickles
# the callback, so registering here also covers jobs that never import train.py.
resolvers.register()

HYDRA_DIR = ".hydra"
SUMMARY = "summary.json"
# What a run leaves in its dir; any of them present means the dir holds a run. (train.log is not among
# them: Hydra creates it for every job, this one too, before the guard runs.)
RUN_TRACES = (HYDRA_DIR, SUMMARY, "checkpoints", "adapter", "csv", "wandb", "merged_16bit", "gguf")
FRESH, RESUME, FINISHED = "fresh", "resume", "finished"
T = TypeVar("T")


class RunDirError(MedllmError):
    """The run dir holds another run that this command must not overwrite."""


def run_traces(run_dir: Path) -> list[str]:
    """The names of a previous run's files and folders in ``run_dir`` (empty folders don't count)."""
    found = []
    for name in RUN_TRACES:
        path = run_dir / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(name)
    return found


def trained_traces(run_dir: Path) -> list[str]:
    """``run_traces`` but ``.hydra``, which a run that stopped before training (a typo, a bad row) leaves alone."""
    return [name for name in run_traces(run_dir) if name != HYDRA_DIR]


def _inside(path: str, run_dir: Path) -> bool:
    return Path(path).expanduser().resolve().is_relative_to(run_dir.resolve())


def plan(run_dir: Path, ckpt_path: Any, key: str = "hydra.run.dir") -> str:
    """fresh | resume | finished: what a run with this ``ckpt_path`` does in ``run_dir``; RunDirError if
    it would overwrite another run. ``key``: the setting that chose the folder, for the error."""
    traces = run_traces(run_dir)
    if traces in ([], [HYDRA_DIR]):  # only the config of a run that stopped before training (a typo, a bad row)
        return FRESH
    if (run_dir / SUMMARY).is_file():
        if ckpt_path == "auto":
            return FINISHED
        raise RunDirError(
            f"{run_dir} holds a finished run ({SUMMARY}); choose another {key} (to train on from it: "
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'} {key}=<new dir>)."
        )
    if ckpt_path == "auto" or (ckpt_path and _inside(str(ckpt_path), run_dir)):
        return RESUME
    raise RunDirError(
        f"{run_dir} already holds a run ({', '.join(traces)}); resume it with ckpt_path=auto, or choose another {key}."
    )


def checkpoint_dir(cfg: DictConfig, run_dir: Path) -> Path:
    """Where the run writes its checkpoints: its ModelCheckpoint callback's ``dirpath``, else <run>/checkpoints."""
    for callback in (cfg.get("callbacks") or {}).values():
        if callback and str(callback.get("_target_", "")).endswith("ModelCheckpoint") and callback.get("dirpath"):
            return Path(callback.dirpath)
    return run_dir / "checkpoints"


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


class RunDirInUse(RunDirError):
    """Another process holds the folder's lock: a run writing into it now."""


_held_locks: list[int] = []
_made_to_lock: list[Path] = []  # folders that lock() created; removed again if the run leaves them empty


def lock(path: Path) -> None:
    """Hold an exclusive lock on the folder ``path`` until ``release_locks``; RunDirInUse if another
    process holds it. The kernel drops it when the process ends, killed or not."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock
        return
    if not path.exists():
        if not _made_to_lock:
            atexit.register(release_locks)  # a run that stops before training leaves no empty folder behind
        _made_to_lock.append(path)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirInUse(
            f"{path} is in use: another train.py is writing into it now; wait for it to end (then resume it with "
            "ckpt_path=auto if it stops unfinished), or choose another folder."
        ) from None
    except OSError:  # a filesystem without locks (some network mounts): no lock
        os.close(fd)
        return
    _held_locks.append(fd)


def release_locks() -> None:
    while _held_locks:
        with contextlib.suppress(OSError):
            os.close(_held_locks.pop())
    while _made_to_lock:
        with contextlib.suppress(OSError):  # not empty: the run wrote into it
            _made_to_lock.pop().rmdir()


def claim(run_dir: Path, check: Callable[[], T]) -> T:
    """Lock ``run_dir`` and run ``check`` (a RunDirError: refused); a refused job releases its locks, stops
    logging into the dir and exits with one line."""
    try:
        lock(run_dir)
        return check()
    except RunDirError as err:
        release_locks()
        detach_file_logs(run_dir)
        sys.exit(f"error: {err}")


def refuse_file_as_dir(path: Any, key: str) -> None:
    """Exit with one line where the folder Hydra is about to create is a file (Hydra's mkdir would raise)."""
    if Path(str(path)).expanduser().is_file():
        sys.exit(f"error: {key}={path} is a file; give a folder (new, or one to resume in).")


def process_rank() -> int:
    """This process's rank in a distributed run, from what torchrun, Lightning's launcher or SLURM set
    (the variables Lightning reads too); 0 outside one."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def detach_file_logs(run_dir: Path) -> None:
    """Stop logging into files inside ``run_dir`` (Hydra's train.log), which belong to the run there."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(run_dir.resolve()):
            root.removeHandler(handler)
            handler.close()


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _yaml(container: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(redact_secrets(container)))


def hydra_files_dir(run_dir: Path, action: str = RESUME) -> Path:
    """``.hydra``, or for a resume (the original files kept) the first free ``.hydra/resume-<n>``. A fresh
    run replaces the ``.hydra`` of a command that stopped before training."""
    hydra_dir = run_dir / HYDRA_DIR
    if action == FRESH or not (hydra_dir / "config.yaml").exists():
        return hydra_dir
    n = 1
    while (hydra_dir / f"resume-{n}").exists():
        n += 1
    return hydra_dir / f"resume-{n}"


def write_hydra_files(config: DictConfig, target: Path) -> None:
    """What Hydra writes to ``.hydra/`` (the job's config unresolved, Hydra's config, the overrides), with
    secrets redacted."""
    task = OmegaConf.to_container(config, resolve=False)
    hydra = task.pop("hydra")
    # Key-based redaction misses a short secret inside these strings: redact them as command lines.
    hydra["overrides"] = {name: redact_argv([str(o) for o in args]) for name, args in hydra["overrides"].items()}
    hydra["job"]["override_dirname"] = ",".join(redact_argv(str(config.hydra.job.override_dirname).split(",")))
    overrides = hydra["overrides"]["task"]
    hydra_cfg = {"hydra": hydra}
    _write_atomically(target / "config.yaml", _yaml(task))
    _write_atomically(target / "hydra.yaml", _yaml(hydra_cfg))
    _write_atomically(target / "overrides.yaml", _yaml(overrides))


def guard_secrets(config: DictConfig) -> None:
    remember_secrets([str(o) for o in config.hydra.overrides.task])
    redact_log_records()


class RunDirGuard(Callback):
    """Hydra callback: refuse to overwrite another run's dir, resume or skip where asked, write ``.hydra/``
    without secrets (Hydra's own writing is off: ``hydra.output_subdir: null``)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        guard_secrets(config)
        refuse_file_as_dir(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        guard_secrets(config)
        refuse_file_as_dir(config.hydra.sweep.dir, "hydra.sweep.dir")
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if config.get("ckpt_path") == "auto" or not sweep_dir.is_dir():
            return
        # Under torchrun every process runs the sweep, and each one's Hydra writes multirun.yaml after this check:
        # there the jobs' traces decide, which no job leaves before all processes meet (its .hydra aside).
        earlier = any(child.is_dir() and trained_traces(child) for child in sweep_dir.iterdir())
        if resolvers.launched_processes() == 1:
            earlier = earlier or (sweep_dir / "multirun.yaml").is_file()
        if earlier:
            sys.exit(
                f"error: {sweep_dir} already holds a sweep; resume its jobs with ckpt_path=auto, or choose another "
                "hydra.sweep.dir."
            )

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        guard_secrets(config)  # again: a SLURM worker runs the job without on_run_start
        run_dir = Path(str(config.hydra.runtime.output_dir))
        sweep_file = Path(str(config.hydra.sweep.dir)) / "multirun.yaml"
        if process_rank() > 0:
            # Rank 0 decides and writes. A finished run's summary.json predates this job, so every rank sees
            # that it must not log into the dir (rank 0 then skips or refuses the run).
            if (run_dir / SUMMARY).is_file():
                detach_file_logs(run_dir)
            return
        if config.hydra.mode == RunMode.MULTIRUN and sweep_file.is_file():
            # Hydra's sweeper wrote it after on_multirun_start, with the overrides in plain text.
            _write_atomically(sweep_file, _yaml(OmegaConf.to_container(OmegaConf.load(sweep_file))))
        ckpt_path = config.get("ckpt_path")

        def check() -> str:
            action = plan(run_dir, ckpt_path)
            for key, path in result_dirs(config, run_dir).items():
                lock(path)
                plan(path, ckpt_path, key)
            return action

        action = claim(run_dir, check)
        if action == FINISHED:
            release_locks()
            detach_file_logs(run_dir)
            return
        write_hydra_files(config, hydra_files_dir(run_dir, action))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        release_locks()
