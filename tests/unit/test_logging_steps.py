"""Logger rows under manual optimization: one train row per optimizer step, keyed by the optimizer step.

Lightning advances its logging step for every micro-batch under manual optimization and repeats on_step
values on every micro-batch of the next window; medllm writes train rows itself, keyed by the optimizer
step (``trainer.global_step``, 1 after the first update), and keys val rows the same way.
"""

from __future__ import annotations

import csv
import functools
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from peft import get_peft_model

from medllm.data.datamodule import ReasoningDataModule
from medllm.models.lora import LoraSpec
from medllm.models.tiny import tiny_llama
from medllm.training.module import ReasoningSFTModule

BASE_LR = 1e-3


def inverse_step_schedule(optimizer, num_training_steps):
    """lr of the k-th optimizer step (0-based) = BASE_LR / (k + 1): each step's rate is distinct."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0 / (k + 1))


def fit_rows(tokenizer, tmp_path, max_steps: int, log_every_n_steps: int) -> list[dict]:
    L.seed_everything(0)
    # 22 training rows in micro-batches of 5: 5 per epoch, the last short, so windows of 2, 2 and 1 micro-batches.
    # Rows cut to 64 tokens, all trained: a light run on 2 CPU cores.
    data = ReasoningDataModule(
        tokenizer,
        batch_size=5,
        val_size=2,
        max_seq_length=64,
        too_long="truncate",
        train_on="all",
        seed=1,
        cache_dir=os.environ["MEDLLM_CACHE_DIR"],  # the session's cache (conftest), never the user's
    )
    model = get_peft_model(tiny_llama(tokenizer, seed=0), LoraSpec(r=4, alpha=8).peft_config())
    module = ReasoningSFTModule(
        model,
        optimizer=functools.partial(torch.optim.AdamW, lr=BASE_LR),
        scheduler=inverse_step_schedule,
        accumulate_grad_batches=2,
    )
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="csv", version=""),
        log_every_n_steps=log_every_n_steps,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == max_steps
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def steps_with(rows: list[dict], key: str) -> list[int]:
    return [int(r["step"]) for r in rows if r.get(key)]


@pytest.mark.parametrize(("log_every_n_steps", "expected"), [(1, [1, 2, 3, 4, 5, 6]), (4, [4, 6])])
def test_one_train_row_per_optimizer_step(tokenizer, tmp_path, log_every_n_steps, expected):
    rows = fit_rows(tokenizer, tmp_path, max_steps=6, log_every_n_steps=log_every_n_steps)
    # Every logged optimizer step once (the last step always), in order, never a micro-batch count.
    for key in ("train/loss", "train/ppl", "train/grad_norm", "train/lr"):
        assert steps_with(rows, key) == expected, key
    # train/lr: the rate the step used, read before the scheduler moved it.
    for row in rows:
        if row.get("train/lr"):
            assert float(row["train/lr"]) == pytest.approx(BASE_LR / int(row["step"]))
    # Validation at each epoch end (after optimizer steps 3 and 6), keyed like the train rows.
    assert steps_with(rows, "val/loss") == [3, 6]
