"""The GRPO LightningModule: one training step is a rollout, its rewards and ``num_iterations`` policy updates.

A step, on each process, for its ``data.batch_size`` prompts:

1. sample ``num_generations`` completions of each prompt with the current policy (``medllm.rl.rollout``);
2. score them with the reward functions (``medllm.rl.rewards``) and turn the rewards into group-relative
   advantages (``medllm.rl.loss``);
3. ``num_iterations`` times: recompute the completions' log-probabilities with the training forward
   (``medllm.rl.logprobs``), micro-batch by micro-batch, and take an optimizer step on the clipped policy loss.
   The step's loss is averaged over the completions of all processes as ``loss_type`` says, so the split into
   micro-batches and processes changes nothing.

With ``beta = 0``, completions whose advantage is zero (every completion of an equal-reward group) have exactly
zero gradient: they are left out of the forward pass, yet still counted by the loss's averaging, as TRL counts
them. Several updates per rollout (``num_iterations > 1``) compare with the log-probabilities of the policy
that sampled, computed once before the first update.

Sampling is seeded by the run's seed, the step and the process: a resumed run samples what the uninterrupted
run would have.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import WandbLogger

from medllm.config.schema import GRPOStage
from medllm.generation.decoding import Sampling
from medllm.models.memory import plan_checkpointing
from medllm.rl.data import PromptBatch
from medllm.rl.logprobs import Batch, completion_logprobs
from medllm.rl.loss import group_advantages, policy_token_loss, sequence_weights
from medllm.rl.policy import enable_checkpointing, reference_policy
from medllm.rl.rewards import RewardSet
from medllm.rl.rollout import Rollout, Rollouts
from medllm.tasks.problems import is_correct
from medllm.training.module import AdapterModule, is_logging_step, sum_over_processes

log = logging.getLogger(__name__)


class GRPOModule(AdapterModule):
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        settings: GRPOStage,
        rewards: RewardSet,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        gradient_clip_val: float | None = None,
        skip_nonfinite_steps: int = 0,
        seed: int = 0,
        max_prompt_length: int = 0,
        prompts_per_step: int = 1,
        gradient_checkpointing: Any = False,
        completions_file: Path | None = None,
    ):
        super().__init__(model, optimizer, scheduler, gradient_clip_val, skip_nonfinite_steps)
        self.tokenizer = tokenizer
        self.settings = settings
        self.rewards = rewards
        self.seed = seed
        self.max_prompt_length = max_prompt_length
        self.prompts_per_step = prompts_per_step
        self.gradient_checkpointing = gradient_checkpointing
        self.completions_file = completions_file
        self.rollouts: Rollouts | None = None
        self.sampling = Sampling(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
        self.epsilon_high = settings.epsilon if settings.epsilon_high is None else settings.epsilon_high
        self.last_metrics: dict[str, float] = {}
        self._val: list[torch.Tensor] = []
        self._rollout_time = (0.0, 0)  # (seconds, new tokens) over the run
        self._step_started = 0.0

    # ---- setup ---------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.rollouts is None:  # here the model is on its device; the cache first, then what fits beside it
            s = self.settings
            self.rollouts = Rollouts(
                self.model,
                self.tokenizer,
                self.max_prompt_length,
                s.max_completion_length,
                rows=self.prompts_per_step * s.num_generations,
                batch_size=None if s.rollout_batch_size == "auto" else s.rollout_batch_size,
                attention=s.decode_attention,
            )
            self._plan_checkpointing()

    def _plan_checkpointing(self) -> None:
        tokens = self.settings.micro_batch_size * (self.max_prompt_length + self.settings.max_completion_length)
        plan = plan_checkpointing(self.gradient_checkpointing, self.model.config, tokens, offloaded=True)
        self.model.checkpointing_plan = plan
        if plan.setting:
            enable_checkpointing(self.model)

    def steps_per_epoch(self, batches: int) -> int:
        return batches * self.settings.num_iterations

    # ---- training ------------------------------------------------------------------------------
    def _sampling_seed(self) -> int:
        return (self.seed * 1_000_003 + self.global_step * 7_919 + self.global_rank) % 2**31

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        self._step_started = time.perf_counter()
        s, group = self.settings, self.settings.num_generations
        problems = [p for p in batch.problems for _ in range(group)]
        prompt_ids = [ids for ids in batch.prompt_ids for _ in range(group)]
        rollout = self.rollouts.sample(prompt_ids, self.sampling, self._sampling_seed())
        prompts = [text for ids in batch.prompt_ids for text in [self.tokenizer.decode(ids)] * group]
        scores = self.rewards.score(prompts, rollout.texts, rollout.completion_ids, problems, self.global_step)
        rewards = scores.total.to(self.device)
        batch_std = _global_std(rewards) if s.scale_rewards == "batch" else None
        advantages = group_advantages(rewards, group, s.scale_rewards, batch_std)
        data = Batch.of(rollout.prompt_ids, rollout.completion_ids, self.rollouts.pad, self.device)
        mask = data.completion_mask()
        if s.mask_truncated_completions:
            mask = mask * (~torch.as_tensor(rollout.truncated, device=self.device))[:, None].float()
        trained = mask.sum(-1)
        completions, tokens = sum_over_processes(
            torch.stack([torch.full_like(trained.sum(), len(trained)), trained.sum()])
        )
        weights = sequence_weights(trained, s.loss_type, completions.item(), tokens.item(), s.max_completion_length)
        old_logps = self._logps_without_grad(data, mask.shape) if s.num_iterations > 1 else None
        ref_logps = None
        if s.beta > 0:
            with reference_policy(self.model):
                ref_logps = self._logps_without_grad(data, mask.shape)
        # With beta = 0 a zero advantage is a zero gradient: only the others go through the forward pass.
        active = [i for i, n in enumerate(trained.tolist()) if n > 0 and (s.beta > 0 or advantages.values[i] != 0)]
        decoder_logps = _padded(rollout.logprobs, mask.shape, self.device)
        for iteration in range(s.num_iterations):
            first = iteration == 0
            stats = self._update(
                data, mask, weights, advantages.values, active, old_logps, ref_logps, decoder_logps if first else None
            )
            if is_logging_step(self.trainer):
                self._log_step(stats, scores, rollout, advantages, problems)
        self._rollout_time = (self._rollout_time[0] + rollout.seconds, self._rollout_time[1] + rollout.new_tokens)
        every = s.log_completions_every
        if every and self.global_step % every < s.num_iterations:
            self._log_completions(prompts, rollout, scores, advantages.values.tolist())

    def _logps_without_grad(self, data: Batch, shape: torch.Size) -> torch.Tensor:
        """Every completion's log-probabilities under the model as it is now, [N, L]."""
        rows = list(range(len(data.lengths)))
        out = torch.zeros(shape, device=self.device)
        with torch.no_grad():
            for first in range(0, len(rows), self.settings.micro_batch_size):
                chunk = rows[first : first + self.settings.micro_batch_size]
                logps, _ = completion_logprobs(self.model, _select(data, chunk), self.settings.temperature)
                out[chunk, : logps.shape[1]] = logps
        return out

    def _update(self, data, mask, weights, advantages, active, old_logps, ref_logps, decoder_logps) -> dict[str, float]:
        """One optimizer step on the rollout (see the module's doc); the step's statistics."""
        s = self.settings
        # Every process runs at least one backward pass (its gradients' all-reduce waits for all of them).
        rows = active or [0]
        chunks = [rows[i : i + s.micro_batch_size] for i in range(0, len(rows), s.micro_batch_size)]
        total = torch.zeros((), device=self.device)
        sums = torch.zeros(6, device=self.device)  # tokens, low clipped, high clipped, kl, entropy, |decoder ratio - 1|
        for number, chunk in enumerate(chunks):
            part = _select(data, chunk)
            logps, entropy = completion_logprobs(self.model, part, s.temperature)
            width = logps.shape[1]
            part_mask = mask[chunk, :width]
            old = old_logps[chunk, :width] if old_logps is not None else logps.detach()
            ref = ref_logps[chunk, :width] if ref_logps is not None else None
            token = policy_token_loss(logps, old, advantages[chunk], s.epsilon, self.epsilon_high, s.beta, ref)
            part_weights = weights[chunk] if active else torch.zeros(1, device=self.device)
            loss = ((token.loss * part_mask).sum(-1) * part_weights).sum()
            with self._sync_context(last=number == len(chunks) - 1):
                self.manual_backward(loss)
            total = total + loss.detach()
            if active:
                sums += torch.stack(
                    [
                        part_mask.sum(),
                        (token.low_clipped * part_mask).sum(),
                        (token.high_clipped * part_mask).sum(),
                        (token.kl * part_mask).sum() if token.kl is not None else torch.zeros((), device=self.device),
                        (entropy * part_mask).sum(),
                        ((torch.exp(logps.detach() - decoder_logps[chunk, :width]) - 1).abs() * part_mask).sum()
                        if decoder_logps is not None
                        else torch.zeros((), device=self.device),
                    ]
                )
        sum_over_processes(sums)
        loss = sum_over_processes(total).item()
        params = [p for group in self.optimizers().param_groups for p in group["params"]]
        if self._record_loss(loss, self.global_step + 1):
            if self.trainer.world_size > 1:  # DDP averaged the gradients over processes: the loss is a sum
                torch._foreach_mul_([p.grad for p in params if p.grad is not None], float(self.trainer.world_size))
        else:
            self.optimizers().zero_grad(set_to_none=True)
        grad_norm, lr = self.clip_and_step(params)
        stats = {"train/loss": loss, "train/grad_norm": float(grad_norm), "train/lr": lr}
        tokens = sums[0].item()
        if tokens == 0:  # no completion went through the forward pass (every group's rewards equal)
            return stats
        low, high, kl, entropy, mismatch = (value / tokens for value in sums[1:].tolist())
        stats |= {
            "train/clip_ratio/low_mean": low,
            "train/clip_ratio/high_mean": high,
            "train/clip_ratio/region_mean": low + high,
            "train/entropy": entropy,
        }
        if s.beta > 0:
            stats["train/kl"] = kl
        if decoder_logps is not None:
            stats["train/sampler_mismatch"] = mismatch
        return stats

    def _sync_context(self, last: bool):
        if last or not hasattr(self.trainer.strategy, "block_backward_sync"):
            return contextlib.nullcontext()
        return self.trainer.strategy.block_backward_sync()

    def _log_step(self, stats: dict[str, float], scores, rollout: Rollout, advantages, problems) -> None:
        lengths = torch.tensor([len(ids) for ids in rollout.completion_ids], dtype=torch.float32)
        correct = torch.tensor([is_correct(text, p) for text, p in zip(rollout.texts, problems, strict=True)])
        local = torch.stack(
            [
                torch.tensor(float(len(lengths))),
                scores.total.sum(),
                (scores.total**2).sum(),
                correct.sum(),
                lengths.sum(),
                torch.tensor(float(sum(rollout.truncated))),
                advantages.equal_reward_groups.sum().float().cpu(),
                torch.tensor(float(len(advantages.equal_reward_groups))),
                torch.tensor(rollout.seconds),
            ]
        ).to(self.device)
        per_function = scores.per_function
        function_sums = torch.cat(
            [per_function.nansum(0), (per_function**2).nansum(0), (~per_function.isnan()).sum(0).float()]
        ).to(self.device)
        n, total, total_sq, right, length, cut, equal, groups, seconds = sum_over_processes(local).tolist()
        fn = sum_over_processes(function_sums).view(3, -1).tolist()
        metrics = {
            **stats,
            "train/reward": total / n,
            "train/reward_std": math.sqrt(max(total_sq / n - (total / n) ** 2, 0.0)),
            "train/accuracy": right / n,
            "train/completion_length": length / n,
            "train/truncated": cut / n,
            "train/equal_reward_groups": equal / groups,
            "perf/rollout_tokens_per_s": length / max(seconds / self.trainer.world_size, 1e-9),
        }
        step_s = time.perf_counter() - self._step_started  # rollout, rewards and this update
        metrics |= {"perf/step_s": step_s, "perf/rollout_share": rollout.seconds / max(step_s, 1e-9)}
        for i, name in enumerate(self.rewards.names):
            count = max(fn[2][i], 1.0)
            mean = fn[0][i] / count
            metrics[f"train/rewards/{name}/mean"] = mean
            metrics[f"train/rewards/{name}/std"] = math.sqrt(max(fn[1][i] / count - mean**2, 0.0))
        self.last_metrics = metrics
        self.log("reward", metrics["train/reward"], prog_bar=True, logger=False, on_step=True, on_epoch=False)
        self.log("acc", metrics["train/accuracy"], prog_bar=True, logger=False, on_step=True, on_epoch=False)
        rate = metrics["perf/rollout_tokens_per_s"]
        self.log("rollout_tok_s", rate, prog_bar=True, logger=False, on_step=True, on_epoch=False)
        self._write_row({**metrics, "epoch": self.trainer.current_epoch})

    def _log_completions(self, prompts: list[str], rollout: Rollout, scores: Any, advantages: list[float]) -> None:
        """This process's completions of the step with their rewards (rank 0's): appended to ``completions_file``
        and, with a W&B logger, a table."""
        if not self.trainer.is_global_zero:
            return
        names = self.rewards.names
        rows = [
            {
                "step": self.global_step,
                "prompt": prompt,
                "completion": text,
                "rewards": {name: _number(value) for name, value in zip(names, values, strict=True)},
                "reward": _number(total),
                "advantage": advantage,
                "truncated": cut,
            }
            for prompt, text, values, total, advantage, cut in zip(
                prompts,
                rollout.texts,
                scores.per_function.tolist(),
                scores.total.tolist(),
                advantages,
                rollout.truncated,
                strict=True,
            )
        ]
        if self.completions_file is not None:
            self.completions_file.parent.mkdir(parents=True, exist_ok=True)
            with self.completions_file.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                columns = ["step", "prompt", "completion", *names, "reward", "advantage", "truncated"]
                data = [
                    [
                        r["step"],
                        r["prompt"],
                        r["completion"],
                        *r["rewards"].values(),
                        r["reward"],
                        r["advantage"],
                        r["truncated"],
                    ]
                    for r in rows
                ]
                logger.log_table("train/completions", columns=columns, data=data, step=self.global_step)

    @property
    def rollout_tokens_per_s(self) -> float | None:
        seconds, tokens = self._rollout_time
        return tokens / seconds if seconds > 0 else None

    # ---- validation: greedy answers to the held-out problems ------------------------------------
    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        rollout = self.rollouts.sample(batch.prompt_ids, Sampling(), seed=self.seed)
        prompts = [self.tokenizer.decode(ids, skip_special_tokens=False) for ids in batch.prompt_ids]
        scores = self.rewards.score(prompts, rollout.texts, rollout.completion_ids, batch.problems, self.global_step)
        correct = sum(is_correct(text, p) for text, p in zip(rollout.texts, batch.problems, strict=True))
        self._val.append(
            torch.tensor([len(batch), correct, scores.total.sum().item(), sum(rollout.truncated)], dtype=torch.float64)
        )

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        n, correct, reward, cut = sum_over_processes(torch.stack(self._val).sum(0).to(self.device)).tolist()
        self._val = []
        metrics = {"val/accuracy": correct / n, "val/reward": reward / n, "val/truncated": cut / n}
        self.log_dict(metrics, prog_bar=True, logger=False, sync_dist=False)
        if not self.trainer.sanity_checking:
            self._write_row(metrics)


def _global_std(rewards: torch.Tensor) -> torch.Tensor:
    """The standard deviation of the step's rewards over all processes (unbiased, as ``Tensor.std``)."""
    n, total, total_sq = sum_over_processes(
        torch.stack([torch.full_like(rewards.sum(), len(rewards)), rewards.sum(), (rewards**2).sum()])
    ).unbind()
    return ((total_sq - total**2 / n) / (n - 1).clamp(min=1)).clamp(min=0).sqrt()


def _number(value: float) -> float | None:
    """A reward as JSON takes it: None for a function's "not applicable" (NaN)."""
    return None if math.isnan(value) else value


def _padded(rows: list[list[float]], shape: torch.Size, device) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, : min(len(row), shape[1])] = torch.as_tensor(row[: shape[1]], dtype=torch.float32)
    return out.to(device)


def _select(data: Batch, rows: list[int]) -> Batch:
    """The rows ``rows`` of ``data``, cut to their own longest row."""
    width = max(data.starts[i] + data.lengths[i] for i in rows)
    index = torch.as_tensor(rows, device=data.input_ids.device)
    return Batch(
        data.input_ids[index, :width],
        data.attention_mask[index, :width],
        [data.starts[i] for i in rows],
        [data.lengths[i] for i in rows],
    )
