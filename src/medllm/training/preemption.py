"""Preemption and time limits: a stop signal saves a resumable checkpoint at the next step boundary.

Outside SLURM, SIGTERM or SIGINT (Ctrl-C) ends the run with a checkpoint and a one-line message saying
how to resume. Under SLURM (``SLURM_JOB_ID`` set), the signal sent before the time limit
(``#SBATCH --signal=USR1@90``) does the same and requeues the job (``scontrol requeue``); the requeued
job runs the same command, and train.yaml's ``ckpt_path: ${medllm.if_requeued:auto}`` and SLURM run dir
(``outputs/slurm-<job id>``) make it resume that run by itself.

Lightning's own stop is used: once every process agrees to stop, ``trainer.received_sigterm`` is set and
Lightning raises ``SIGTERMException`` after the batch, runs the ``on_exception`` hooks and tears down.
What Lightning's signal handlers do is replaced while training runs, for two reasons: they act inside the
handler (its SIGTERM handler runs a collective there; its SLURM handler saves an ``hpc_ckpt`` mid-step,
so gradients accumulated within the window are lost and the resumed run differs), and they stop at the
next micro-batch rather than at the end of the accumulation window. Here the handler only notes the
signal; the stop waits for the optimizer step, where the checkpoint equals the step checkpoints that
``ckpt_path=auto`` resumes. Lightning restores the previous handlers when fit ends.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from types import FrameType

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from medllm.config.resolvers import slurm_run_name
from medllm.runs.layout import CHECKPOINTS, LAST_CHECKPOINT
from medllm.training.module import HostCopy, sum_over_processes

log = logging.getLogger(__name__)

# The signal hydra/launcher=slurm's jobs get before their time limit: submitit's sbatch scripts always
# ask for --signal=USR2@<hydra.launcher.signal_delay_s>. Handled here as requeue_signal, in place of
# submitit's own handler, which would requeue without saving the steps since the last checkpoint.
SUBMITIT_SIGNAL = signal.SIGUSR2


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes (``<array job>_<task>`` for an array task); None outside SLURM."""
    name = slurm_run_name("")
    return name.removeprefix("slurm-") or None


class Preemption(L.Callback):
    """Stop signals save a checkpoint at the next optimizer step; under SLURM the job is then requeued.

    requeue_signal: the signal SLURM sends before the time limit (sbatch ``--signal=<it>@<seconds>``);
        SIGUSR2 in jobs of hydra/launcher=slurm (submitit's).
    requeue: under SLURM, requeue the job after saving (false: save and exit only).
    """

    def __init__(self, requeue_signal: str = "SIGUSR1", requeue: bool = True):
        self.requeue_signal = signal.Signals[
            requeue_signal if requeue_signal.startswith("SIG") else f"SIG{requeue_signal}"
        ]
        self.requeue = requeue
        self.received: signal.Signals | None = None
        self.saved: Path | None = None
        self._vote: HostCopy | None = None  # the processes' count of signals at the previous optimizer step

    def _note(self, signum: int, _: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now, without a save
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signal.Signals(signum)
            log.warning("received %s: stopping after the current optimizer step", self.received.name)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._vote = None
        signals = [signal.SIGTERM, signal.SIGINT]
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":  # its sbatch script asks for USR2 whatever we say
            self.requeue_signal = SUBMITIT_SIGNAL
        if slurm_job_id() is not None:
            signals.append(self.requeue_signal)
        for signum in signals:  # the main thread only (signal.signal's rule); Lightning restores them at teardown
            signal.signal(signum, self._note)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not getattr(pl_module, "between_steps", True):
            return  # mid-window: the gradients accumulated so far are in no checkpoint
        if not self._agreed_to_stop(trainer, pl_module.device):
            return
        self.saved = _checkpoint_folder(trainer) / LAST_CHECKPOINT
        trainer.save_checkpoint(self.saved)  # the step checkpoints' kind, at the same point of the loop
        trainer._signal_connector.received_sigterm = True  # Lightning stops after this batch

    def _agreed_to_stop(self, trainer: L.Trainer, device) -> bool:
        """Whether to stop after this optimizer step. Every process takes part, so all stop at the same step
        even when only some of them got the signal: each step's vote is an all-reduce queued on the GPU's
        stream and read one step later, when it is done, so no process waits for the others, and every
        process reads the same count at the same step."""
        if trainer.world_size == 1:
            return self.received is not None
        previous = self._vote
        vote = torch.full((1,), float(self.received is not None), device=device)
        self._vote = HostCopy(sum_over_processes(vote))
        return previous is not None and previous.tolist()[0] > 0

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or self.saved is None:
            return
        name = self.received.name if self.received else "a stop signal (on another process)"
        stopped = f"stopped by {name} at step {trainer.global_step}; checkpoint saved: {self.saved}."
        job = slurm_job_id()
        if job is not None and self.requeue and self.received in (self.requeue_signal, None):
            if trainer.is_global_zero:
                requeued = subprocess.run(["scontrol", "requeue", job], check=False).returncode == 0
                then = "it resumes by itself" if requeued else "`scontrol requeue` failed: resume it by hand"
                exception.code = f"{stopped} Requeued SLURM job {job}: {then}."
            else:
                exception.code = 1
            return
        run_dir = Path(trainer.default_root_dir)
        # SystemExit's code: a text is printed as the last line and the exit status is 1.
        exception.code = f"{stopped} Resume: the same command with ckpt_path=auto hydra.run.dir={run_dir}"


def _checkpoint_folder(trainer: L.Trainer) -> Path:
    """Where the checkpoint callback writes (``ckpt_path=auto`` looks there)."""
    callback = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
    if callback is not None and callback.dirpath:
        return Path(callback.dirpath)
    return Path(trainer.default_root_dir) / CHECKPOINTS
