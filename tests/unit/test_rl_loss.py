"""GRPO's arithmetic against its definitions: advantages, the clipped token loss, and the three step losses."""

from __future__ import annotations

import pytest
import torch

from medllm.rl.loss import STD_FLOOR, group_advantages, policy_token_loss, sequence_weights


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_sum_to_zero_in_every_group(scale):
    rewards = torch.rand(6 * 4, generator=torch.Generator().manual_seed(0))
    advantages = group_advantages(rewards, 4, scale).values.view(6, 4)
    assert torch.allclose(advantages.sum(1), torch.zeros(6), atol=1e-5)


def test_group_scaling_divides_by_the_group_std_and_an_equal_group_is_zero_and_counted():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    advantages = group_advantages(rewards, 4, "group")
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    expected = (torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + STD_FLOOR)).tolist() + [0.0] * 4
    assert advantages.values.tolist() == pytest.approx(expected)
    assert advantages.equal_reward_groups.tolist() == [False, True]


def test_batch_scaling_uses_the_std_of_the_whole_step():
    rewards = torch.tensor([1.0, 0.0, 3.0, 1.0])
    advantages = group_advantages(rewards, 2, "batch", batch_std=torch.tensor(2.0))
    assert advantages.values.tolist() == pytest.approx(
        [0.5 / (2 + STD_FLOOR), -0.5 / (2 + STD_FLOOR), 1 / 2.0001, -1 / 2.0001]
    )


def test_an_equal_reward_group_gives_zero_gradient():
    logps = torch.randn(4, 5, requires_grad=True)
    advantages = group_advantages(torch.full((4,), 0.7), 4, "group").values
    loss = policy_token_loss(logps, logps.detach(), advantages, 0.2, 0.28).loss.sum()
    loss.backward()
    assert torch.count_nonzero(logps.grad) == 0


def test_at_ratio_one_the_loss_is_the_plain_policy_gradient():
    """First iteration: logp_old = logp, so the gradient is -A * d logp (REINFORCE with a group baseline)."""
    logps = torch.randn(3, 4, requires_grad=True)
    advantages = torch.tensor([1.5, -0.5, 0.0])
    token = policy_token_loss(logps, logps.detach(), advantages, 0.2, 0.28)
    token.loss.sum().backward()
    assert torch.allclose(logps.grad, -advantages[:, None].expand(3, 4))
    assert torch.all(token.ratio == 1) and not token.low_clipped.any() and not token.high_clipped.any()


def test_clipping_binds_only_in_the_direction_of_the_advantage():
    old = torch.zeros(1, 4)
    logps = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]])).requires_grad_()
    advantages = torch.tensor([1.0])
    token = policy_token_loss(logps, old, advantages, 0.2, 0.28)
    # r = 1.5 > 1.28 with A > 0: clipped at 1.28, no gradient; r = 0.5 < 0.8 with A > 0: not clipped.
    assert token.loss[0].tolist() == pytest.approx([-1.28, -1.28, -0.5, -0.5])
    assert token.high_clipped[0].tolist() == [True, True, False, False] and not token.low_clipped.any()
    token.loss.sum().backward()
    assert logps.grad[0].tolist() == pytest.approx([0.0, 0.0, -0.5, -0.5])
    negative = policy_token_loss(logps.detach(), old, -advantages, 0.2, 0.28)
    # A < 0: r = 0.5 < 0.8 is clipped (at 0.8), r = 1.5 is not.
    assert negative.loss[0].tolist() == pytest.approx([1.5, 1.5, 0.8, 0.8])
    assert negative.low_clipped[0].tolist() == [False, False, True, True]


def test_kl_penalty_is_the_k3_estimate_and_zero_at_the_reference():
    logps, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]])
    token = policy_token_loss(logps, logps, torch.tensor([0.0]), 0.2, 0.2, beta=0.1, ref_logps=ref)
    k3 = torch.exp(torch.tensor(-0.5)) + 0.5 - 1
    assert token.kl[0].tolist() == pytest.approx([k3.item(), 0.0])
    assert token.loss[0].tolist() == pytest.approx([0.1 * k3.item(), 0.0])
    with pytest.raises(ValueError, match="reference"):
        policy_token_loss(logps, logps, torch.tensor([0.0]), 0.2, 0.2, beta=0.1)


# Token losses of two completions, 2 and 4 tokens long (0 past the end), and the step losses by hand.
TOKEN_LOSSES = torch.tensor([[1.0, 3.0, 0.0, 0.0], [2.0, 2.0, 2.0, 6.0]])
TRAINED = torch.tensor([2, 4])
HAND = {
    "grpo": ((1 + 3) / 2 + (2 + 2 + 2 + 6) / 4) / 2,  # each completion's mean, then the mean: 3.5
    "dapo": (1 + 3 + 2 + 2 + 2 + 6) / 6,  # every token alike: 16 / 6
    "dr_grpo": (1 + 3 + 2 + 2 + 2 + 6) / (2 * 8),  # over completions x max_completion_length (8): 1.0
}


@pytest.mark.parametrize("loss_type", list(HAND))
def test_step_losses_equal_their_definitions_and_split_into_parts_that_add_up(loss_type):
    weights = sequence_weights(TRAINED, loss_type, completions=2, tokens=6, max_completion_length=8)
    whole = (TOKEN_LOSSES.sum(-1) * weights).sum()
    assert whole.item() == pytest.approx(HAND[loss_type])
    # Micro-batches (or processes) of one completion each, with the step's counts: the same loss.
    parts = sum((TOKEN_LOSSES[i].sum() * weights[i]) for i in range(2))
    assert parts.item() == pytest.approx(whole.item())


def test_unknown_choices_are_refused():
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(torch.zeros(4), 2, "groups")
    with pytest.raises(ValueError, match="loss_type"):
        sequence_weights(TRAINED, "ppo", 2, 6, 8)
