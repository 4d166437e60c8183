"""Token-weighted loss across gradient accumulation: batch 8 x 1 equals batch 1 x accumulation 8."""

from __future__ import annotations

import functools

import lightning as L
import torch
from peft import get_peft_model

from medllm.data.datamodule import ReasoningDataModule
from medllm.models.lora import LoraSpec
from medllm.models.tiny import tiny_llama
from medllm.training.module import ReasoningSFTModule


def quiet_cpu_trainer(**kwargs) -> L.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or validation."""
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **kwargs,
    )


def one_step_adapter(tokenizer, batch_size: int, accumulate: int, tmp_path) -> dict[str, torch.Tensor]:
    L.seed_everything(0)
    data = ReasoningDataModule(tokenizer, batch_size=batch_size, val_size=2, cache_dir=str(tmp_path), seed=1)
    model = get_peft_model(tiny_llama(tokenizer, seed=0), LoraSpec(r=4, alpha=8).peft_config())
    module = ReasoningSFTModule(
        model,
        optimizer=functools.partial(torch.optim.SGD, lr=0.5),  # SGD: the update is proportional to the gradient
        accumulate_grad_batches=accumulate,
        gradient_clip_val=None,
    )
    trainer = quiet_cpu_trainer(max_steps=1)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 1
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def test_batch_8x1_equals_batch_1_x_accumulation_8(tokenizer, tmp_path):
    big = one_step_adapter(tokenizer, batch_size=8, accumulate=1, tmp_path=tmp_path)
    accumulated = one_step_adapter(tokenizer, batch_size=1, accumulate=8, tmp_path=tmp_path)
    untrained = get_peft_model(tiny_llama(tokenizer, seed=0), LoraSpec(r=4, alpha=8).peft_config())
    assert any(not torch.equal(v, dict(untrained.named_parameters())[k]) for k, v in big.items() if "lora_B" in k)
    for name, value in big.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-4, atol=1e-6)


def test_a_model_handed_over_in_eval_mode_trains_in_train_mode(tokenizer, tmp_path):
    # Unsloth's from_pretrained returns the model in eval mode, where its checkpointing and LoRA dropout stay off.
    model = get_peft_model(tiny_llama(tokenizer, seed=0), LoraSpec(r=4, alpha=8, dropout=0.1).peft_config()).eval()
    modes: list[bool] = []

    class RecordModes(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append(all(m.training for m in model.modules()))

    data = ReasoningDataModule(tokenizer, batch_size=4, val_size=2, cache_dir=str(tmp_path), seed=1)
    module = ReasoningSFTModule(model, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    trainer = quiet_cpu_trainer(max_steps=2, callbacks=[RecordModes()])
    trainer.fit(module, datamodule=data)
    assert modes == [True, True]


def test_ddp_steps_reduce_the_loss_without_a_barrier(tokenizer, tmp_path, monkeypatch):
    """A DDP step sums its loss and tokens over processes with a plain all-reduce: a barrier (as Lightning's
    strategy.reduce puts first) makes the host wait for the GPU at every step under NCCL."""
    from lightning.pytorch.strategies import DDPStrategy

    from tests.helpers.cli import free_port

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    in_step, barriers_in_steps, reduced = [False], [], []
    barrier, all_reduce = torch.distributed.barrier, torch.distributed.all_reduce

    def spy_barrier(*args, **kwargs):
        barriers_in_steps.extend([1] if in_step[0] else [])
        return barrier(*args, **kwargs)

    def spy_all_reduce(tensor, *args, **kwargs):
        reduced.extend([tensor.clone()] if in_step[0] else [])
        return all_reduce(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.distributed, "barrier", spy_barrier)
    monkeypatch.setattr(torch.distributed, "all_reduce", spy_all_reduce)

    class MarkSteps(L.Callback):
        def on_train_batch_start(self, *args):
            in_step[0] = True

        def on_train_batch_end(self, *args):
            in_step[0] = False

    data = ReasoningDataModule(tokenizer, batch_size=4, val_size=2, cache_dir=str(tmp_path), seed=1)
    model = get_peft_model(tiny_llama(tokenizer, seed=0), LoraSpec(r=4, alpha=8).peft_config())
    module = ReasoningSFTModule(model, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    strategy = DDPStrategy(process_group_backend="gloo", find_unused_parameters=False)
    # use_distributed_sampler=False, as train.py sets it: the data module slices the global batches itself.
    trainer = quiet_cpu_trainer(
        max_steps=3, devices=1, strategy=strategy, use_distributed_sampler=False, callbacks=[MarkSteps()]
    )
    try:
        trainer.fit(module, datamodule=data)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert trainer.global_step == 3
    # Each step reduced its (loss sum, trained tokens), DDP's gradient buckets aside, and nothing waited.
    stats = [t for t in reduced if t.shape == (2,)]
    assert len(stats) == 3 and all(t[1] > 0 for t in stats)
    assert barriers_in_steps == []
