"""The LightningModules that train a LoRA adapter: what every stage shares, and SFT's token-weighted loss.

``AdapterModule`` holds what every training stage does the same way: the optimizer and schedule, the model
in train mode, logger rows keyed by the optimizer step, non-finite losses skipped or stopped at, and
checkpoints that keep only the trainable weights. A stage (SFT here, GRPO in ``medllm.rl``) adds its step.

SFT: Lightning's own gradient accumulation averages the loss per micro-batch, which weights the tokens of
short rows more than those of long ones. Here each micro-batch contributes the *sum* of its token
losses, and the gradients of a window of ``accumulate_grad_batches`` micro-batches are divided by the
number of trained tokens in the whole window (across all processes): the update equals one big batch
of the same rows, whatever the split into micro-batches or processes.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable

import lightning as L
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

from medllm.config.schema import TrainConfig, Trainer
from medllm.errors import MedllmError
from medllm.models.causal_lm import HeldOutMetrics, causal_lm_forward

log = logging.getLogger(__name__)

LOSSES_KEY = "medllm_train_losses"  # in checkpoints: the run's first and latest training loss


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed in place over the processes of a distributed run (as is, in a single process).

    Not Lightning's ``strategy.reduce``: that puts a barrier before the all-reduce, and an NCCL barrier makes
    the host wait until the GPU has finished all queued work. Once a step, that kept the host from queueing
    the next step while the GPU worked. The plain all-reduce is ordered on the GPU's stream; the host reads
    the result only when it needs it.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def is_last_step(trainer: L.Trainer) -> bool:
    """Whether the optimizer step just taken is the run's last (max_steps, or the last batch of max_epochs)."""
    max_epochs = trainer.max_epochs or -1  # -1: no limit
    return (trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps) or (
        trainer.is_last_batch and 0 < max_epochs <= trainer.current_epoch + 1
    )


def is_logging_step(trainer: L.Trainer) -> bool:
    """Whether the optimizer step just taken gets a logger row: every ``trainer.log_every_n_steps``
    optimizer steps, and the last step of the run."""
    every = trainer.log_every_n_steps
    return every >= 1 and (trainer.global_step % every == 0 or is_last_step(trainer))


class HostCopy:
    """A tensor copied to the host as soon as the GPU has it, without making the host wait: ``tolist()``
    waits for that copy only, not for the work queued after it."""

    def __init__(self, tensor: torch.Tensor):
        self._ready = None
        if tensor.is_cuda:
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = tensor.detach().clone()

    def tolist(self) -> list:
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.tolist()


class LossReadback:
    """A step's (loss sum, trained tokens), read on the host without waiting for later work (HostCopy)."""

    def __init__(self, stats: torch.Tensor, step: int):
        self.step = step
        self._copy = HostCopy(stats)

    def values(self) -> tuple[float, float]:
        """(mean loss per trained token, trained tokens)."""
        loss_sum, tokens = self._copy.tolist()
        tokens = max(tokens, 1.0)
        return loss_sum / tokens, tokens


class NonFiniteLossError(MedllmError):
    """The loss became nan or inf."""


class AdapterModule(L.LightningModule):
    """A LoRA-wrapped model trained under manual optimization; subclasses write ``training_step`` and say how
    many optimizer steps an epoch of ``n`` batches takes (``steps_per_epoch``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        gradient_clip_val: float | None = Trainer.gradient_clip_val,
        skip_nonfinite_steps: int = TrainConfig.skip_nonfinite_steps,
    ):
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.gradient_clip_val = gradient_clip_val
        self.skip_nonfinite_steps = skip_nonfinite_steps
        self.nonfinite_steps_skipped = 0
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self.first_train_loss: float | None = None  # of the run's first step (a checkpoint carries it)
        self.last_train_loss: float | None = None

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def on_fit_start(self) -> None:
        # Unsloth (and from_pretrained) return models in eval mode, and Lightning keeps modules' modes:
        # without this, LoRA dropout and Unsloth's gradient checkpointing would stay off. Set before the
        # fit loop starts, which warns about modules left in eval mode.
        self.model.train()

    def on_train_start(self) -> None:
        self._schedule_from_here()

    def _schedule_from_here(self) -> None:
        """A resumed run's learning rate from its own schedule. The checkpoint's optimizer holds the rate the
        old schedule set for this step; a run trained further (a higher trainer.max_steps) lays the schedule
        out anew, and its first step would otherwise take the old one's rate."""
        scheduler = self.lr_schedulers()
        if self.global_step == 0 or not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            return
        rates = [base * f(scheduler.last_epoch) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        groups = scheduler.optimizer.param_groups
        if any(not math.isclose(group["lr"], rate, rel_tol=1e-9, abs_tol=1e-15) for group, rate in zip(groups, rates)):
            log.info(
                "step %d: learning rate %.3g from this run's schedule of %d steps (the checkpoint's was %.3g)",
                self.global_step,
                rates[0],
                self.optimizer_steps(),
                groups[0]["lr"],
            )
            for group, rate in zip(groups, rates):
                group["lr"] = rate

    def clip_and_step(self, params: list[torch.nn.Parameter]) -> tuple[torch.Tensor, float]:
        """Clip the gradients' global norm, take the optimizer and scheduler step; (the norm, the step's rate)."""
        optimizer = self.optimizers()
        max_norm = self.gradient_clip_val if self.gradient_clip_val else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        lr = optimizer.param_groups[0]["lr"]  # the rate of this step, before the scheduler moves it
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return grad_norm, lr

    def _write_row(self, metrics: dict[str, torch.Tensor | float]) -> None:
        """One logger row keyed by the optimizer step (``global_step``, 1 after the first update).

        Written here rather than by ``self.log``: under manual optimization Lightning keys its rows by
        micro-batch and repeats on_step values on every micro-batch of the next window.
        """
        if not self.loggers or not self.trainer.is_global_zero:
            return
        row = {name: float(value) for name, value in metrics.items()}
        for logger in self.loggers:
            logger.log_metrics(row, step=self.global_step)
            logger.save()

    def _record_loss(self, loss: float, step: int) -> bool:
        """Note a step's loss; False if it was not finite (the step then updates nothing)."""
        if not math.isfinite(loss):
            self._on_nonfinite_loss(step)
            return False
        if self.first_train_loss is None:
            self.first_train_loss = loss
        self.last_train_loss = loss
        return True

    def _on_nonfinite_loss(self, step: int) -> None:
        """Skip the update (up to ``skip_nonfinite_steps`` times), then stop; checkpoints stay as they were."""
        if self.nonfinite_steps_skipped < self.skip_nonfinite_steps:
            self.nonfinite_steps_skipped += 1
            log.warning(
                "non-finite loss at step %d: update skipped (%d of %d allowed)",
                step,
                self.nonfinite_steps_skipped,
                self.skip_nonfinite_steps,
            )
            return
        raise NonFiniteLossError(
            f"the loss became non-finite (nan/inf) at step {step}; training stopped and the last good checkpoint "
            f"was kept (resume with ckpt_path=auto). Try a lower optimizer.lr, gradient clipping "
            f"(trainer.gradient_clip_val), or skip_nonfinite_steps=N to step over a few bad batches."
        )

    # ---- optimisation ------------------------------------------------------------------------
    def steps_per_epoch(self, batches: int) -> int:
        """Optimizer steps an epoch of ``batches`` training batches (each process's) takes."""
        raise NotImplementedError

    def optimizer_steps(self) -> int:
        """Optimizer steps of the whole run (Lightning counts batches, not steps, under manual optimization)."""
        self.trainer.estimated_stepping_batches  # noqa: B018 (sets up the training data)
        per_epoch, epochs = self.trainer.num_training_batches, self.trainer.max_epochs or -1
        bounds = [self.trainer.max_steps] if self.trainer.max_steps > 0 else []
        if epochs > 0 and math.isfinite(per_epoch):  # (an iterable without a length: only max_steps bounds it)
            bounds.append(epochs * self.steps_per_epoch(per_epoch))
        if not bounds:
            raise MedllmError("the run has no end: set trainer.max_steps, or trainer.max_epochs with sized data")
        return min(bounds)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, num_training_steps=self.optimizer_steps())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints: trainable weights only, never the frozen (possibly 4-bit) base ---------------
    def final_losses(self) -> tuple[float | None, float | None]:
        """The run's first and latest training loss, as a checkpoint taken now should carry them."""
        return self.first_train_loss, self.last_train_loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["rng_states"] = _collect_rng_states()  # dropout masks continue as if never stopped
        # The run's first and latest loss: a resumed run's summary describes the whole run, not its last leg.
        first, last = self.final_losses()
        checkpoint[LOSSES_KEY] = {"first": first, "last": last}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            _set_rng_states(checkpoint["rng_states"])
        losses = checkpoint.get(LOSSES_KEY, {})
        self.first_train_loss, self.last_train_loss = losses.get("first"), losses.get("last")


class ReasoningSFTModule(AdapterModule):
    """SFT: next-token loss on the trained tokens, weighted by tokens across accumulation and processes."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        accumulate_grad_batches: int = Trainer.accumulate_grad_batches,
        gradient_clip_val: float | None = Trainer.gradient_clip_val,
        skip_nonfinite_steps: int = TrainConfig.skip_nonfinite_steps,
    ):
        super().__init__(model, optimizer, scheduler, gradient_clip_val, skip_nonfinite_steps)
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        self.held_out = HeldOutMetrics()
        self._window_loss = torch.zeros(())
        self._window_tokens = 0  # trained tokens of this process in the current window
        self._window_batches = 0
        self._pending: LossReadback | None = None  # a step whose loss is not checked yet

    def forward(self, batch: dict[str, torch.Tensor]):
        return causal_lm_forward(self.model, batch)

    # ---- training ----------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self._check_accumulation()
        super().on_train_start()

    def _check_accumulation(self) -> None:
        """A window ends with its epoch: more micro-batches per step than an epoch holds would make every step
        smaller than asked, silently."""
        per_epoch, accumulation = self.trainer.num_training_batches, self.accumulate_grad_batches
        if math.isinf(per_epoch) or accumulation == 1:
            return
        if accumulation > per_epoch:
            raise MedllmError(
                f"trainer.accumulate_grad_batches={accumulation}, but an epoch holds {per_epoch} micro-batch(es) "
                f"(each process): every step would train on {per_epoch}, not {accumulation}. Lower "
                f"trainer.accumulate_grad_batches to at most {per_epoch}, or lower data.batch_size."
            )
        if per_epoch % accumulation:
            log.warning(
                "an epoch holds %d micro-batches, not a multiple of trainer.accumulate_grad_batches=%d: the last step "
                "of each epoch trains on %d of them",
                per_epoch,
                accumulation,
                per_epoch % accumulation,
            )

    def _sync_context(self, last_in_window: bool):
        if last_in_window or not hasattr(self.trainer.strategy, "block_backward_sync"):
            return contextlib.nullcontext()
        return self.trainer.strategy.block_backward_sync()

    @property
    def between_steps(self) -> bool:
        """No micro-batch of an unfinished accumulation window taken: a checkpoint now loses nothing."""
        return self._window_batches == 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # Counted here, not from batch_idx: a resumed run starts mid-epoch at a window boundary.
        self._window_batches += 1
        last_in_window = self._window_batches == self.accumulate_grad_batches or self.trainer.is_last_batch
        n_tokens = batch["num_trained"]  # counted by the collator, on the CPU
        with self._sync_context(last_in_window):
            loss_sum = self(batch).loss.float() * n_tokens
            self.manual_backward(loss_sum)
        self._window_loss = self._window_loss.to(self.device) + loss_sum.detach()
        self._window_tokens += n_tokens
        if last_in_window:
            self._step_optimizer()
        return loss_sum.detach() / max(n_tokens, 1)

    def _step_optimizer(self) -> None:
        optimizer = self.optimizers()
        # torch.full, not torch.tensor: a fill kernel, where a host-to-device copy would wait for the GPU.
        tokens = torch.full((), float(self._window_tokens), device=self.device)
        stats = sum_over_processes(torch.stack([self._window_loss, tokens]))
        self._window_loss = torch.zeros((), device=self.device)
        self._window_tokens = 0
        self._window_batches = 0
        self._settle()  # the previous step's loss: computed long ago, so no wait
        readback = LossReadback(stats, step=self.global_step + 1)
        # torch's fused optimizers can skip an update on the GPU (found_inf, as under AMP): the loss is then
        # checked at the next step and the host never waits for the GPU, which keeps it a step ahead.
        # Other optimizers wait here, since whether to update at all depends on the loss.
        raw = optimizer.optimizer
        skips_on_gpu = getattr(raw, "_step_supports_amp_scaling", False)
        if skips_on_gpu:
            self._pending, finite = readback, True
        else:
            finite = self._record(readback)
        params = [p for group in optimizer.param_groups for p in group["params"]]  # the trainable ones
        if finite:
            # DDP averages gradients over processes; undo that, then divide by the window's trained tokens.
            grads = [p.grad for p in params if p.grad is not None]
            torch._foreach_mul_(grads, self.trainer.world_size / stats[1].clamp(min=1))
        else:
            optimizer.zero_grad(set_to_none=True)  # no gradients: the step below updates nothing
        if skips_on_gpu:
            raw.found_inf = (~torch.isfinite(stats[0])).float()
        try:
            grad_norm, lr = self.clip_and_step(params)
        finally:
            if skips_on_gpu:
                del raw.found_inf
        if is_logging_step(self.trainer):
            self._settle()  # this step's loss: a wait for the GPU, on logging steps only
            loss, tokens = readback.values()
            # Only on logging steps: self.log costs milliseconds of host time, during which the GPU would idle.
            self.log("train/loss", loss, prog_bar=True, logger=False, on_step=True, on_epoch=False)
            self._write_row(
                {
                    "train/loss": loss,
                    "train/ppl": math.exp(min(loss, 20.0)),
                    "train/grad_norm": grad_norm if finite else math.nan,
                    "train/lr": lr,
                    "train/tokens_trained": tokens,
                    "epoch": self.trainer.current_epoch,
                }
            )

    def _settle(self) -> None:
        """Check the loss of a step whose update was queued without waiting for it."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._record(pending)

    def _record(self, readback: LossReadback) -> bool:
        """Note a step's loss; False if it was not finite (the step then updates nothing)."""
        return self._record_loss(readback.values()[0], readback.step)

    def on_train_end(self) -> None:
        self._settle()

    # ---- validation --------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.held_out.update(self(batch), batch)

    def on_validation_epoch_end(self) -> None:
        metrics = self.held_out.compute()
        # callback_metrics and the progress bar; the logger row is written with the optimizer step.
        self.log_dict(metrics, prog_bar=True, logger=False, sync_dist=False)
        if not self.trainer.sanity_checking:
            self._write_row(metrics)
        self.held_out.reset()

    # ---- optimisation ------------------------------------------------------------------------
    def steps_per_epoch(self, batches: int) -> int:
        """An accumulation window ends at the last micro-batch of each epoch: ``ceil(n / accumulation)`` steps."""
        return math.ceil(batches / self.accumulate_grad_batches)

    def final_losses(self) -> tuple[float | None, float | None]:
        first, last = self.first_train_loss, self.last_train_loss
        if self._pending is not None:  # the last step's loss, read but not judged: that is the next step's work
            loss, _ = self._pending.values()
            if math.isfinite(loss):
                first, last = (loss if first is None else first), loss
        return first, last
