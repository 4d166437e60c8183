"""The batch layouts that bench/step_variants.py compares hold the same rows, in the shapes they claim."""

from __future__ import annotations

import pytest
import torch

from bench import harness, step_variants
from medllm.data.chat_format import IGNORE_INDEX

SETTINGS = harness.Settings("unused", "medical", batch=8, seq=2048, steps=4, warmup=1, seed=0)


@pytest.fixture(scope="module")
def layouts():
    # medllm_rows reads a checkpoint's tokenizer: tested on its own below
    return {name: make(SETTINGS, 3) for name, make in step_variants.LAYOUTS.items() if name != "medllm_rows"}


def test_packed_layouts_hold_the_same_rows_at_their_own_or_one_static_length(layouts):
    packed, static, with_lengths = layouts["packed"], layouts["packed_static"], layouts["packed_static_lengths"]
    assert len(packed) == len(static) == len(with_lengths) == SETTINGS.total_steps
    assert {tuple(b["input_ids"].shape) for b in static} == {(1, 3 * SETTINGS.seq)}
    assert len({b["input_ids"].shape[1] for b in packed}) > 1  # a new length nearly every step
    for dynamic, fixed, lengths in zip(packed, static, with_lengths):
        n = dynamic["num_tokens"]
        assert n == fixed["num_tokens"] and torch.equal(dynamic["input_ids"][:, :n], fixed["input_ids"][:, :n])
        assert dynamic["num_trained"] == fixed["num_trained"] == harness.count_tokens(fixed)[1]
        # packed_seq_lengths: the rows, then the padding tail, covering the whole sequence
        seq_lengths = lengths["packed_seq_lengths"]
        assert seq_lengths.dtype == torch.int32 and int(seq_lengths.sum()) == fixed["input_ids"].shape[1]
        starts = torch.cumsum(seq_lengths, 0)[:-1]
        assert (fixed["position_ids"][0, starts] == 0).all() and (fixed["labels"][0, starts] == IGNORE_INDEX).all()


def test_dense_and_padded_layouts_count_real_tokens_only(layouts):
    for batch in layouts["dense"]:
        assert batch["input_ids"].shape == (3, SETTINGS.seq) and batch["num_tokens"] == 3 * SETTINGS.seq
    for batch in layouts["padded"]:
        assert batch["input_ids"].shape[0] == 8
        assert batch["num_tokens"] == int(batch["attention_mask"].sum()) < batch["input_ids"].numel()


def test_medllm_rows_are_the_unpacked_fixed_batches_the_other_paths_train(tokenizer, tmp_path):
    """In fixed mode train.py gets [batch, seq] rows of exactly seq tokens, all trained, as the loop does;
    experiment=qlora_r16 alone would pack them into one [1, batch x seq] sequence."""
    tokenizer.save_pretrained(tmp_path)  # the layout reads only the checkpoint's tokenizer
    settings = harness.Settings(str(tmp_path), "fixed", batch=2, seq=64, steps=2, warmup=1, seed=0)
    batches = step_variants.LAYOUTS["medllm_rows"](settings, 2)
    assert len(batches) == settings.total_steps
    for batch in batches:
        assert batch["input_ids"].shape == (2, 64) and "position_ids" not in batch
        assert batch["num_tokens"] == 2 * 64 and batch["num_trained"] == harness.count_tokens(batch)[1] == 2 * 63


def test_async_meter_times_and_counts_the_steps_the_waiting_meter_does():
    waiting, never_waiting = harness.ThroughputMeter(1), harness.AsyncThroughputMeter(1)
    batch = {"input_ids": torch.ones(2, 8, dtype=torch.long), "labels": torch.ones(2, 8, dtype=torch.long)}
    for _ in range(4):
        for meter in (waiting, never_waiting):
            meter.count(batch)
            meter.step_end(torch.tensor(1.5))
    a, b = waiting.summary(), never_waiting.summary()
    assert a["steps"] == b["steps"] == 3 and a["tokens"] == b["tokens"] == 3 * 16
    assert a["label_tokens"] == b["label_tokens"] == 3 * 14
    assert never_waiting.last_loss == 1.5 and b["seconds"] > 0


def test_every_runner_trains_every_step_and_counts_the_same_tokens(tokenizer):
    from peft import get_peft_model

    from medllm.models.lora import LoraSpec
    from medllm.models.tiny import tiny_llama

    settings = harness.Settings("unused", "fixed", batch=2, seq=32, steps=3, warmup=1, seed=0)
    batches = step_variants.LAYOUTS["dense"](settings, 2)
    for batch in batches:  # the harness draws Llama-3-sized token ids: fold them into the tiny vocabulary
        batch["input_ids"] %= len(tokenizer)
        batch["labels"] = batch["input_ids"].clone()
    summaries = {}
    for name, runner in step_variants.RUNNERS.items():
        model = get_peft_model(tiny_llama(tokenizer, seed=0), LoraSpec(r=4, alpha=8).peft_config())
        before = {k: v.clone() for k, v in model.named_parameters() if "lora_B" in k}
        summaries[name] = runner(model, batches, settings.warmup).summary()
        after = dict(model.named_parameters())
        assert any(not torch.equal(after[k], v) for k, v in before.items()), name  # it trained
    assert {(s["steps"], s["tokens"], s["label_tokens"]) for s in summaries.values()} == {(3, 3 * 64, 3 * 62)}
