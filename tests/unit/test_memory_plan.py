"""gradient_checkpointing=auto plans from an estimate of training's peak memory: the estimate grows with
the tokens of a micro-batch, and the choice follows the card's free memory (capped by MEDLLM_MEMORY_CAP_GIB)."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaConfig

from medllm.config.inputs import CAP_VARIABLE
from medllm.errors import MedllmError
from medllm.models.lora import LoraSpec
from medllm.models.memory import checkpointing_summary, lora_state_gib, plan_checkpointing
from medllm.models.tiny import tiny_llama
from tests.helpers.configs import compose_train

# DeepSeek-R1-Distill-Llama-8B's shape, no weights.
LLAMA_8B = LlamaConfig(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
)
SEQ = 2048


def plan(monkeypatch, cap_gib, setting="auto", batch=4, **kwargs):
    monkeypatch.setenv(CAP_VARIABLE, str(cap_gib))
    return plan_checkpointing(setting, LLAMA_8B, batch * SEQ, **kwargs)


def test_a_24_gib_card_gets_offloaded_checkpointing_an_80_gib_one_none(monkeypatch):
    for batch in (4, 8):
        small = plan(monkeypatch, 24, batch=batch)
        assert small.setting == "unsloth" and small.memory_cap_gib == 24
        assert small.free_gib <= 24 and small.estimate_gib < small.free_gib  # offloaded, it fits
    large = plan(monkeypatch, 80, batch=4)
    assert large.setting is False and large.free_gib <= 80
    assert large.estimate_gib > plan(monkeypatch, 80, "unsloth", batch=4).estimate_gib + 20  # activations kept
    # transformers' backend: its own checkpointing, not Unsloth's
    assert plan(monkeypatch, 24, batch=4, offloaded=True).setting is True


@pytest.mark.parametrize("setting", ["false", "true", "unsloth"])
def test_the_estimate_grows_linearly_with_tokens_per_micro_batch(monkeypatch, setting):
    e2, e4, e8 = (plan(monkeypatch, 1000, setting, batch=b).estimate_gib for b in (2, 4, 8))
    assert 0 < e2 < e4 < e8
    assert e8 - e4 == pytest.approx(2 * (e4 - e2))  # equal steps per token


def test_keeping_activations_costs_most_per_token_offloading_them_least(monkeypatch):
    def slope(setting):
        return (
            plan(monkeypatch, 1000, setting, batch=8).estimate_gib
            - plan(monkeypatch, 1000, setting, batch=4).estimate_gib
        )

    off, on, offloaded = slope("false"), slope("true"), slope("unsloth")
    assert off > 5 * on > 10 * offloaded > 0
    # Unsloth's offloaded checkpointing and its chunked loss: about 1.4 GiB for 4 x 2,048 tokens
    assert 1 < offloaded < 2


def test_auto_turns_checkpointing_off_from_one_free_memory_upwards(monkeypatch):
    """The choice is a threshold on free memory, above the peak without checkpointing and not far above it."""
    without = plan(monkeypatch, 1000, "false", batch=4).estimate_gib
    caps = [c / 2 for c in range(20, 200)]
    off = [plan(monkeypatch, cap, batch=4).setting is False for cap in caps]
    first_off = off.index(True)
    assert all(off[first_off:]) and not any(off[:first_off])
    assert without < caps[first_off] < 1.5 * without


def test_lora_state_counts_what_peft_trains(tokenizer):
    spec = LoraSpec(r=8, alpha=16, target_modules=("q_proj", "v_proj", "down_proj"))
    model = get_peft_model(tiny_llama(tokenizer, seed=0), spec.peft_config())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_state_gib(model.config, spec) == pytest.approx(trainable * 16 / 2**30)


def test_a_higher_rank_raises_the_estimate_by_its_adapter_state(monkeypatch):
    r16, r64 = (plan(monkeypatch, 1000, "unsloth", lora=LoraSpec(r=r)).estimate_gib for r in (16, 64))
    assert r64 - r16 == pytest.approx(3 * lora_state_gib(LLAMA_8B, LoraSpec(r=16)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the plan reads its memory")
def test_without_a_gpu_or_a_cap_there_is_nothing_to_plan(monkeypatch):
    monkeypatch.delenv(CAP_VARIABLE, raising=False)
    for setting, given in (("auto", False), ("unsloth", "unsloth"), ("false", False)):
        cpu = plan_checkpointing(setting, LLAMA_8B, 4 * SEQ)
        assert cpu.setting == given and cpu.estimate_gib is None


@pytest.mark.parametrize("value", ["24GB", "0", "-3", "inf", "nan"])
def test_a_bad_cap_is_one_clear_error(monkeypatch, value):
    with pytest.raises(MedllmError, match=f"{CAP_VARIABLE}=.*must be a positive number of GiB"):
        plan(monkeypatch, value)


def test_the_summary_sets_the_measured_peak_beside_the_estimate(monkeypatch):
    planned = plan(monkeypatch, 80)
    summary = checkpointing_summary(planned, 0.9 * planned.estimate_gib)
    assert summary["setting"] is False and summary["estimate_gib"] == planned.estimate_gib
    assert summary["peak_vs_estimate"] == pytest.approx(0.9)
    on_cpu = checkpointing_summary(planned, None)  # no GPU peak to compare with
    assert on_cpu["peak_mem_gib"] is None and on_cpu["peak_vs_estimate"] is None


@pytest.mark.parametrize("experiment", ["qlora_r16", "qlora_r64", "lora_r16"])
def test_the_gpu_experiments_plan_their_checkpointing(experiment, tmp_path):
    cfg = compose_train(f"experiment={experiment}", f"paths.output_dir={tmp_path}")
    assert cfg.model.backend == "unsloth" and cfg.model.gradient_checkpointing == "auto"
