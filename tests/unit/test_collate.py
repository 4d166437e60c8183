"""Padding is masked by position; packing keeps rows apart and loses no trained token."""

from __future__ import annotations

import random

import pytest
import torch

from medllm.data.chat_format import IGNORE_INDEX, R1ChatFormat
from medllm.data.collate import PackCollator, PadCollator, count_trained, pack
from medllm.data.records import sample_rows
from medllm.models.causal_lm import causal_lm_forward
from medllm.models.tiny import tiny_llama


@pytest.fixture(scope="module")
def rows(tokenizer):
    sample = sample_rows()[:6]
    out = R1ChatFormat().tokenize_batch(
        tokenizer, [r["Question"] for r in sample], [r["Complex_CoT"] for r in sample], [r["Response"] for r in sample]
    )
    return [{"input_ids": i, "labels": lab} for i, lab in zip(out["input_ids"], out["labels"])]


def test_padding_with_the_eos_id_keeps_every_final_eos_trained(rows, tokenizer):
    eos = tokenizer.eos_token_id
    batch = PadCollator(pad_token_id=eos, pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape[1] % 8 == 0
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["labels"][i, n - 1] == eos  # the row's own EOS is a label...
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()  # ...the padding EOS ids are not
        assert batch["attention_mask"][i].sum() == n
    assert batch["num_tokens"] == sum(len(r["input_ids"]) for r in rows)
    assert batch["num_trained"] == sum(sum(label != IGNORE_INDEX for label in r["labels"][1:]) for r in rows)


def test_pack_respects_capacity_and_places_every_row_once():
    rng = random.Random(0)
    lengths = [rng.randint(20, 300) for _ in range(500)]
    bins = pack(lengths, 512)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    assert sum(lengths) / (len(bins) * 512) > 0.95


def test_pack_rejects_a_row_longer_than_the_sequence():
    with pytest.raises(ValueError, match="can't be packed"):
        pack([10, 600], 512)


@pytest.mark.parametrize("train_on", ["answer", "all"])
def test_packed_loss_equals_token_weighted_loss_of_rows_alone(rows, tokenizer, train_on):
    if train_on == "all":  # every token a label, the first of each row too: none may be predicted across rows
        rows = [{"input_ids": r["input_ids"], "labels": list(r["input_ids"])} for r in rows]
    model = tiny_llama(tokenizer, seed=3).eval()
    bins = [rows[:4], rows[4:]]
    batch = PackCollator(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=8)(bins)
    assert "attention_mask" not in batch  # boundaries come from the restarting position_ids
    assert batch["input_ids"].shape == (1, -(-int(batch["num_tokens"]) // 8) * 8)  # one row, Unsloth-style
    with torch.no_grad():
        packed = causal_lm_forward(model, batch)
        packed_sum = packed.loss * count_trained(batch["labels"])
        alone_sum, alone_tokens = 0.0, 0
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            alone_sum += causal_lm_forward(model, {"input_ids": ids, "labels": labels}).loss * count_trained(labels)
            alone_tokens += int(count_trained(labels))
    assert int(count_trained(batch["labels"])) == alone_tokens
    torch.testing.assert_close(packed_sum / alone_tokens, alone_sum / alone_tokens, rtol=1e-5, atol=1e-5)


def test_packed_logits_of_a_row_do_not_depend_on_its_neighbours(rows, tokenizer):
    model = tiny_llama(tokenizer, seed=3).eval()
    collate = PackCollator(pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        a = collate([[rows[0], rows[1]]])
        b = collate([[rows[2], rows[1]]])
        la = causal_lm_forward(model, a).logits
        lb = causal_lm_forward(model, b).logits
    n0, n1, n2 = (len(rows[i]["input_ids"]) for i in range(3))
    torch.testing.assert_close(la[0, n0 : n0 + n1], lb[0, n2 : n2 + n1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("static", [True, False])
def test_packed_loader_gives_every_row_once_in_single_row_batches(tokenizer, tmp_path, static):
    from medllm.data.datamodule import ReasoningDataModule

    data = ReasoningDataModule(
        tokenizer,
        batch_size=2,
        val_size=2,
        max_seq_length=512,
        packing=True,
        packed_static_shape=static,
        cache_dir=str(tmp_path),
        seed=1,
    )
    data.setup("fit")
    batches = list(data.train_dataloader())
    shapes = {tuple(b["input_ids"].shape) for b in batches}
    if static:  # one shape for every step, the last (possibly short) batch too
        assert shapes == {(1, 2 * 512)}
    else:
        assert all(rows == 1 and length % 8 == 0 and length <= 2 * 512 for rows, length in shapes)
    # Every training row exactly once: the rows' own first tokens (position 0) count them.
    starts = sum(int((b["position_ids"][0, : b["num_tokens"]] == 0).sum()) for b in batches)
    assert starts == len(data.splits["train"])
    assert sum(b["num_tokens"] for b in batches) == sum(data.splits["train"]["length"])
    assert sum(b["num_trained"] for b in batches) == sum(
        count_trained(torch.tensor([labels])) for labels in data.splits["train"]["labels"]
    )
