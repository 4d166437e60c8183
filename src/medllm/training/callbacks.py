"""Callbacks: throughput and peak memory, measured for the run summary and the logger."""

from __future__ import annotations

import resource
import sys
import time

import lightning as L
import torch

from medllm.training.module import is_last_step, is_logging_step


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by this process, or its peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


class ThroughputMonitor(L.Callback):
    """Tokens per second over the optimizer steps after ``warmup_steps`` (compilation, allocator warm-up),
    and the peak memory of training.

    Tokens are row tokens without padding; trained tokens are those with a label. Under DDP the counts
    are those of all processes; the peak memory is this process's.
    """

    def __init__(self, warmup_steps: int = 1):
        self.warmup_steps = warmup_steps
        self._counted = (0, 0)  # (tokens, trained tokens) of the micro-batches since the window opened
        self._timed = (0, 0)  # the counts at the last clock reading
        self._start: float | None = None
        self._last: float | None = None
        self._step_seen = 0
        self.peak_gib: float | None = None
        self._peak_on_gpu = False

    def _now(self, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is not None:
            tokens, trained = self._counted
            self._counted = (tokens + batch["num_tokens"], trained + batch["num_trained"])
        if trainer.global_step == self._step_seen:
            return
        self._step_seen = trainer.global_step
        # The clock is read (and the GPU waited for) only where the window opens, on logging steps and at
        # the last step: a wait at every step would leave the GPU idle while the host prepares the next.
        opening = trainer.global_step == self.warmup_steps
        logging = is_logging_step(trainer)
        if not (opening or logging or is_last_step(trainer)):
            return
        now = self._now(pl_module.device)
        if opening:
            self._start = now
        elif self._start is not None:
            self._last, self._timed = now, self._global_counts(trainer, pl_module.device)
        # Keyed by the optimizer step, like train/* (Lightning's own counter counts micro-batches here).
        if logging and self.seconds > 0 and trainer.is_global_zero:
            row = {"perf/tokens_per_s": self.tokens_per_s, "perf/peak_mem_gib": peak_memory_gib(pl_module.device)}
            for logger in trainer.loggers:
                logger.log_metrics(row, step=trainer.global_step)

    def _global_counts(self, trainer, device: torch.device) -> tuple[int, int]:
        """The token counts of all processes together (every process calls this at the same steps)."""
        if trainer.world_size == 1:
            return self._counted
        counts = trainer.strategy.reduce(torch.tensor(self._counted, device=device), reduce_op="sum")
        return tuple(int(n) for n in counts.tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        # Read here: saving the checkpoint and the adapter afterwards may allocate more.
        self.peak_gib = peak_memory_gib(pl_module.device)
        self._peak_on_gpu = pl_module.device.type == "cuda"

    @property
    def gpu_peak_gib(self) -> float | None:
        """The peak of training on the GPU; None on a CPU, whose resident memory no GPU estimate describes."""
        return self.peak_gib if self._peak_on_gpu else None

    @property
    def seconds(self) -> float:
        return (self._last - self._start) if self._start is not None and self._last is not None else 0.0

    @property
    def timed_tokens(self) -> int:
        """Tokens of the timed steps (all processes)."""
        return self._timed[0]

    @property
    def tokens_per_s(self) -> float:
        return self._timed[0] / self.seconds if self.seconds > 0 else float("nan")

    @property
    def trained_tokens_per_s(self) -> float:
        return self._timed[1] / self.seconds if self.seconds > 0 else float("nan")
