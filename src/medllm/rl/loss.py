"""GRPO's arithmetic: group-relative advantages, the clipped policy loss per token, and how token losses are
averaged into a step's loss. Plain tensor functions, as TRL's GRPOTrainer defines them (its names kept).

Advantages (TRL's ``scale_rewards``): a completion's reward minus its group's mean reward, divided by the
standard deviation of its group's rewards (``group``), of all the step's rewards (``batch``), or not at all
(``none``, Dr. GRPO), plus ``STD_FLOOR`` so a group of equal rewards divides zero by a small number. A group
whose completions all scored the same has zero advantage everywhere: it teaches nothing (beyond the KL term)
and is counted.

Token loss: with ``r = exp(logp - logp_old)`` (``logp_old``: the policy that sampled, ``r = 1`` at the first
iteration), ``-min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A)`` plus ``beta`` times the k3 estimate of
the KL divergence to the reference, ``exp(ref - logp) - (ref - logp) - 1``.

Step loss (TRL's ``loss_type``), over the N completions of a step (all processes) with ``|o_i|`` trained
tokens each:

- ``grpo``: the mean over completions of each one's mean token loss: a token of a long completion weighs less;
- ``dapo``: the sum of token losses over all the step's trained tokens, divided by their number (token-level);
- ``dr_grpo``: the sum divided by ``N * max_completion_length``, a constant: no length bias at all.

Each is written as a weight per completion (``sequence_weights``), so micro-batches and processes add up
their weighted sums to exactly the loss of the whole step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Added to the standard deviation the advantages are divided by (TRL's 1e-4).
STD_FLOOR = 1e-4


@dataclass
class Advantages:
    values: torch.Tensor  # [N]: one per completion
    equal_reward_groups: torch.Tensor  # [N / group_size] bool: every completion of the group scored the same


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_rewards: str, batch_std: torch.Tensor | None = None
) -> Advantages:
    """Advantages of ``rewards`` [N] (groups of ``group_size`` consecutive completions of one prompt).

    ``batch_std``: the standard deviation of the whole step's rewards (all processes) for ``scale_rewards="batch"``;
    by default, that of ``rewards``.
    """
    groups = rewards.view(-1, group_size)
    centred = (groups - groups.mean(dim=1, keepdim=True)).view(-1)
    group_std = groups.std(dim=1)
    equal = torch.isclose(group_std, torch.zeros_like(group_std))
    if scale_rewards == "none":
        return Advantages(centred, equal)
    if scale_rewards == "group":
        std = group_std.repeat_interleave(group_size)
    elif scale_rewards == "batch":
        std = (rewards.std() if batch_std is None else batch_std).expand_as(rewards)
    else:
        raise ValueError(f"scale_rewards={scale_rewards!r} must be group, batch or none")
    return Advantages(centred / (std + STD_FLOOR), equal)


@dataclass
class TokenLoss:
    loss: torch.Tensor  # [B, T] per token
    ratio: torch.Tensor  # [B, T] the importance ratio r
    low_clipped: torch.Tensor  # [B, T] bool: r below 1 - epsilon with a negative advantage (the clip binds)
    high_clipped: torch.Tensor  # [B, T] bool: r above 1 + epsilon_high with a positive advantage
    kl: torch.Tensor | None  # [B, T] the k3 estimate, where beta > 0


def policy_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float,
    epsilon_high: float,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
) -> TokenLoss:
    """The clipped surrogate loss of each token (see the module's doc); ``advantages`` [B], the rest [B, T]."""
    ratio = torch.exp(logps - old_logps)
    advantage = advantages[:, None]
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high) * advantage
    loss = -torch.min(unclipped, clipped)
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference policy's log-probabilities")
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        loss = loss + beta * kl
    return TokenLoss(
        loss=loss,
        ratio=ratio.detach(),
        low_clipped=(ratio < 1 - epsilon) & (advantage < 0),
        high_clipped=(ratio > 1 + epsilon_high) & (advantage > 0),
        kl=kl.detach() if kl is not None else None,
    )


def sequence_weights(
    trained_tokens: torch.Tensor, loss_type: str, completions: float, tokens: float, max_completion_length: int
) -> torch.Tensor:
    """The weight of each completion's summed token loss in the step's loss (see the module's doc).

    ``trained_tokens`` [B]: each completion's tokens in the loss (0 where masked); ``completions`` and
    ``tokens``: the whole step's counts, all processes together.
    """
    if loss_type == "grpo":
        return 1.0 / (completions * trained_tokens.clamp(min=1).float())
    constant = {"dapo": 1.0 / max(tokens, 1.0), "dr_grpo": 1.0 / (completions * max_completion_length)}
    if loss_type in constant:
        return torch.full(trained_tokens.shape, constant[loss_type], device=trained_tokens.device)
    raise ValueError(f"loss_type={loss_type!r} must be grpo, dapo or dr_grpo")
