"""The problems reinforcement learning trains on: read, checked, prompted in the R1 format, split and batched.

A batch is a ``PromptBatch``: the problems of one step and their prompt ids (no tensors: the rollout
decodes them). Prompts are the questions evaluation asks (``BenchmarkItem.prompt_text``) in the chat format
SFT trained on (``R1ChatFormat``, with ``data.instruction``), so GRPO improves the answers eval.py scores.
Training batches resume where a checkpoint left them (``ResumableDataModule``).
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import DataLoader

from medllm.config.schema import ProblemData
from medllm.config.schema_check import typed
from medllm.data.chat_format import R1ChatFormat
from medllm.data.prepare import summary_metrics
from medllm.data.records import DataError
from medllm.data.rows import validation_count
from medllm.data.sampler import ResumableBatchSampler, ResumableDataModule
from medllm.tasks.items import BenchmarkItem
from medllm.tasks.problems import Problem, read_problems

log = logging.getLogger(__name__)


class PromptBatch:
    """The problems of one step and their prompt ids. A plain class, so Lightning passes it through untouched."""

    def __init__(self, problems: list[Problem], prompt_ids: list[list[int]]):
        self.problems, self.prompt_ids = problems, prompt_ids

    def __len__(self) -> int:
        return len(self.problems)


@dataclass
class ProblemSummary:
    """What was read, kept and dropped, and how long the prompts are."""

    source: str
    format: str
    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    multiple_choice: int = 0
    open_ended: int = 0
    prompt_tokens_mean: float = 0.0
    prompt_tokens_max: int = 0

    def lines(self) -> list[str]:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        return [
            f"problems: {self.source} (format {self.format})",
            f"  rows: read {self.rows_read}, kept {self.rows_kept}; dropped: {dropped}",
            f"  multiple choice or yes/no/maybe {self.multiple_choice}, open-ended {self.open_ended}",
            f"  prompt tokens: mean {self.prompt_tokens_mean:.0f}, max {self.prompt_tokens_max}",
        ]

    def metrics(self) -> dict[str, float]:
        return summary_metrics(self)


class ProblemDataModule(ResumableDataModule):
    """Problems in, ``PromptBatch``es of ``data.batch_size`` prompts out (see the module's doc)."""

    def __init__(self, tokenizer: Any, max_completion_length: int = 0, **settings: Any):
        """``settings``: the data group's keys (``medllm.config.schema.ProblemData``); ``max_completion_length``:
        the stage's, which the longest prompt must leave room for within ``max_seq_length``."""
        super().__init__()
        self.tokenizer = tokenizer
        self.settings = typed(settings, ProblemData, "data.")
        self.max_completion_length = max_completion_length
        self.chat_format = R1ChatFormat(instruction=self.settings.instruction)
        self.splits: dict[str, list[tuple[Problem, list[int]]]] = {}
        self.summary: ProblemSummary | None = None

    @property
    def max_prompt_length(self) -> int:
        return self.settings.max_seq_length - self.max_completion_length

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = self.settings
        problems, source, layout = read_problems(
            data.path, data.format, data.hub_name, data.subset, data.split, data.revision, data.hub_token
        )
        prompts = self.chat_format.encode_generation_prompts(self.tokenizer, [p.prompt_text() for p in problems])
        kept = [(p, ids) for p, ids in zip(problems, prompts, strict=True) if len(ids) <= self.max_prompt_length]
        summary = ProblemSummary(source=source, format=layout, rows_read=len(problems), rows_kept=len(kept))
        if len(kept) < len(problems):
            summary.dropped["prompt_too_long"] = len(problems) - len(kept)
        if not kept:
            raise DataError(
                f"{source}: no prompt fits: the shortest is {min(map(len, prompts))} tokens and max_seq_length="
                f"{self.settings.max_seq_length} leaves {self.max_prompt_length} beside stage.max_completion_length="
                f"{self.max_completion_length}; raise max_seq_length or lower stage.max_completion_length"
            )
        lengths = [len(ids) for _, ids in kept]
        summary.prompt_tokens_mean, summary.prompt_tokens_max = sum(lengths) / len(lengths), max(lengths)
        summary.multiple_choice = sum(isinstance(p, BenchmarkItem) for p, _ in kept)
        summary.open_ended = len(kept) - summary.multiple_choice
        n_val = validation_count(self.settings.val_size, len(kept), source, summary.dropped)
        order = _seeded_order(len(kept), self.settings.seed)
        self.splits = {"val": [kept[i] for i in order[:n_val]], "train": [kept[i] for i in order[n_val:]]}
        self.summary = summary
        for line in summary.lines():
            log.info(line)

    def fingerprint(self) -> dict[str, dict]:
        """Each split's count and a digest of its prompts and answers (order aside), for the run record."""
        return {name: _fingerprint(split) for name, split in self.splits.items()}

    def problems(self, split: str) -> list[Problem]:
        return [problem for problem, _ in self.splits[split]]

    def _loader(self, split: str, sampler: ResumableBatchSampler) -> DataLoader:
        rows = self.splits[split]

        def collate(indices: list[int]) -> PromptBatch:
            return PromptBatch([rows[i][0] for i in indices], [rows[i][1] for i in indices])

        return DataLoader(range(len(rows)), batch_sampler=sampler, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        rows, size = len(self.splits["train"]), self.settings.batch_size
        if rows < size:
            raise DataError(
                f"{self.summary.source}: {rows} training problems make no step of data.batch_size={size}: lower "
                "data.batch_size or data.val_size"
            )
        return self._loader("train", self.resumable_sampler(rows, size, self.settings.seed))

    def val_dataloader(self) -> DataLoader:
        rows = len(self.splits["val"])
        size = self.settings.eval_batch_size or rows
        return self._loader("val", ResumableBatchSampler(rows, size, shuffle=False))


def _seeded_order(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _fingerprint(rows: list[tuple[Problem, list[int]]]) -> dict[str, Any]:
    digests = sorted(
        hashlib.sha256(repr((ids, getattr(p, "gold", None) or getattr(p, "answer", None))).encode()).digest()
        for p, ids in rows
    )
    return {"rows": len(rows), "digest": hashlib.sha256(b"".join(digests)).hexdigest()[:16]}
