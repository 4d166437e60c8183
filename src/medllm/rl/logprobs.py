"""Per-token log-probabilities of completions under the training forward, without the whole batch's logits.

A 128k-token vocabulary makes a completion's logits 0.5 MB a token in float32: for 64 completions of 1,024
tokens, 32 GB, which is what runs GRPO out of memory in the field. Here the model runs up to its last hidden
states only; the output layer is applied ``CHUNK`` positions at a time, each chunk's log-softmax reduced at
once to the sampled token's log-probability (and the entropy, for the logs), and under autograd each chunk is
recomputed in the backward pass rather than kept (``torch.utils.checkpoint``): a chunk's logits is all that
is ever in memory.

Logits are divided by the sampling temperature first, as the rollout sampled (TRL does the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

# Positions whose logits are built at once.
CHUNK = 1024


@dataclass
class Batch:
    """Right-padded prompt + completion rows, and where each completion sits."""

    input_ids: torch.Tensor  # [B, W]
    attention_mask: torch.Tensor  # [B, W]
    starts: list[int]  # each row's first completion position (its prompt's length)
    lengths: list[int]  # each row's completion length

    @classmethod
    def of(cls, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int, device) -> Batch:
        rows = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.as_tensor(row)
            mask[i, : len(row)] = 1
        return cls(ids.to(device), mask.to(device), [len(p) for p in prompts], [len(c) for c in completions])

    def completion_mask(self) -> torch.Tensor:
        """[B, L] (L: the longest completion): 1 on each row's completion tokens."""
        width = max(max(self.lengths), 1)
        positions = torch.arange(width, device=self.input_ids.device)
        return (positions[None, :] < torch.as_tensor(self.lengths, device=positions.device)[:, None]).float()


def _token_logps(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, temperature: float):
    logits = head(hidden).float() / temperature
    logz = torch.logsumexp(logits, dim=-1)
    logps = logits.gather(-1, targets[:, None]).squeeze(-1) - logz
    with torch.no_grad():
        probs = torch.softmax(logits, dim=-1)
        entropy = logz - (probs * logits).sum(-1)
    return logps, entropy


def completion_logprobs(model, batch: Batch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps, entropy)``, each [B, L]: each completion token's log-probability under ``model`` (a PEFT causal
    LM) at ``temperature``, and the entropy of the distribution it was drawn from (no gradient); 0 past a row's
    completion."""
    causal_lm = model.base_model.model
    hidden = causal_lm.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    width = max(max(batch.lengths), 1)
    mask = batch.completion_mask().bool()
    rows = torch.arange(len(batch.starts), device=hidden.device)[:, None]
    # The hidden state at position t - 1 predicts the token at t.
    starts = torch.as_tensor(batch.starts, device=hidden.device)[:, None]
    positions = (starts - 1 + torch.arange(width, device=hidden.device)[None, :]).clamp(max=hidden.shape[1] - 1)
    targets = batch.input_ids[rows, (positions + 1).clamp(max=hidden.shape[1] - 1)]
    picked_hidden, picked_targets = hidden[rows, positions][mask], targets[mask]
    head = causal_lm.get_output_embeddings()
    logps, entropy = [], []
    for start in range(0, len(picked_targets), CHUNK):
        part = (picked_hidden[start : start + CHUNK], head, picked_targets[start : start + CHUNK], temperature)
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_token_logps, *part, use_reentrant=False)
        else:
            lp, ent = _token_logps(*part)
        logps.append(lp)
        entropy.append(ent)
    flat_logps = torch.cat(logps) if logps else hidden.new_zeros(0, dtype=torch.float32)
    flat_entropy = torch.cat(entropy) if entropy else hidden.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)
    out_entropy = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)
    return out.masked_scatter(mask, flat_logps), out_entropy.masked_scatter(mask, flat_entropy)
