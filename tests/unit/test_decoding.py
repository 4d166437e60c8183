"""The merged engine's decoding (static cache, grouped attention) and adapter merging, on the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model

from medllm.data.chat_format import R1ChatFormat
from medllm.evaluation.evaluate import evaluate
from medllm.generation.decoding import GROUPED_ATTENTION, KV_BLOCK, Decoder, DecodingError, Sampling, flex_is_fast_on
from medllm.generation.engines import resolve_engine
from medllm.generation.hf_generate import generate
from medllm.generation.merged import merged
from medllm.models.backends import ModelLoadError
from medllm.models.lora import LoraSpec
from medllm.models.tiny import tiny_llama, tiny_tokenizer
from tests.helpers.adapters import QUESTIONS, save_adapter
from tests.helpers.configs import compose_eval


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> list[list[int]]:
    return R1ChatFormat().encode_generation_prompts(tokenizer, QUESTIONS)


def fresh_model(tokenizer):
    return tiny_llama(tokenizer, seed=0).eval()


def decode(
    model, tokenizer, prompt_ids, batch_size=None, max_new_tokens=24, attention="sdpa", **kwargs
) -> list[list[int]]:
    decoder = Decoder(
        model, max(map(len, prompt_ids)), max_new_tokens, batch_size, len(prompt_ids), attention=attention
    )
    return decoder.decode(
        prompt_ids, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, progress=False, **kwargs
    )


def test_grouped_attention_gives_the_logits_of_transformers_sdpa(tokenizer, prompt_ids) -> None:
    """One decoding step after a prompt: the cache read once per key head equals repeating it per query head."""
    ids = torch.tensor([prompt_ids[1]])

    def next_logits(attention: str) -> torch.Tensor:
        model = fresh_model(tokenizer)
        model.set_attn_implementation(attention)
        with torch.no_grad():
            out = model(ids[:, :-1], use_cache=True)
            return model(ids[:, -1:], past_key_values=out.past_key_values, use_cache=True).logits

    assert fresh_model(tokenizer).config.num_attention_heads > fresh_model(tokenizer).config.num_key_value_heads
    torch.testing.assert_close(next_logits(GROUPED_ATTENTION), next_logits("sdpa"), rtol=1e-5, atol=1e-5)


def test_greedy_decoding_equals_plain_generate_whatever_the_batch(tokenizer, prompt_ids) -> None:
    """Left padding, the static cache and a short last batch filled with copies change no completion."""
    expected = [
        texts[0] for texts in generate(fresh_model(tokenizer), tokenizer, prompt_ids, 24, batch_size=1, progress=False)
    ]
    for batch_size in (1, 2, None):  # 2: the last batch of 5 prompts is filled up; None: all at once
        got = decode(fresh_model(tokenizer), tokenizer, prompt_ids, batch_size)
        assert [tokenizer.decode(ids, skip_special_tokens=False) for ids in got] == expected, batch_size


def test_row_budgets_cut_each_row_and_results_keep_the_callers_order(tokenizer, prompt_ids) -> None:
    model = fresh_model(tokenizer)
    full = decode(model, tokenizer, prompt_ids, batch_size=2)
    budgets = [3, 24, 1, 10, 7]
    cut = decode(model, tokenizer, prompt_ids, batch_size=2, row_budgets=budgets)
    assert cut == [ids[:budget] for ids, budget in zip(full, budgets)]
    assert all(tokenizer.eos_token_id not in ids for ids in full)  # completions end before their EOS


def test_flex_attention_decodes_as_the_full_cache_mask(tokenizer, prompt_ids) -> None:
    """Rows cross cache blocks and slots are refilled: reading only the blocks up to each row's column
    (FlexAttention) gives the completions of attending over the whole cache with a mask."""
    model = fresh_model(tokenizer)
    budgets = [150, 200, 3, 170, 90]
    assert max(len(p) + b for p, b in zip(prompt_ids, budgets)) > KV_BLOCK  # some rows reach a second block
    sdpa = decode(model, tokenizer, prompt_ids, 2, max_new_tokens=200, row_budgets=budgets)
    assert decode(model, tokenizer, prompt_ids, 2, 200, "flex", row_budgets=budgets) == sdpa


def test_flex_block_mask_reads_the_blocks_up_to_each_rows_column(tokenizer) -> None:
    decoder = Decoder(fresh_model(tokenizer), 100, 3 * KV_BLOCK, 4, attention="flex")
    decoder.columns.copy_(torch.tensor([0, KV_BLOCK - 1, KV_BLOCK, 2 * KV_BLOCK + 5]))
    mask = decoder._block_mask()
    assert mask.full_kv_num_blocks.flatten().tolist() == [0, 1, 1, 2]  # wholly visible
    assert mask.kv_num_blocks.flatten().tolist() == [1, 0, 1, 1]  # the block a row's column falls in
    partial = mask.kv_indices[:, 0, 0, 0].tolist()
    assert [p for p, n in zip(partial, [1, 0, 1, 1]) if n] == [0, 1, 2]
    # FlexAttention's CUDA decoding kernel reads the whole blocks' indices with the partial ones' strides.
    assert mask.full_kv_indices.stride() == mask.kv_indices.stride()
    assert mask.full_kv_num_blocks.stride() == mask.kv_num_blocks.stride()
    with pytest.raises(ValueError, match="^decode_attention=flash must be one of auto | sdpa | flex"):
        Decoder(fresh_model(tokenizer), 100, 8, 1, attention="flash")


def test_sampling_is_seeded(tokenizer, prompt_ids) -> None:
    model = fresh_model(tokenizer)
    sampling = Sampling(do_sample=True, temperature=1.0, top_p=0.9)
    first = decode(model, tokenizer, prompt_ids, 2, sampling=sampling, seed=3)
    assert first == decode(model, tokenizer, prompt_ids, 2, sampling=sampling, seed=3)
    assert first != decode(model, tokenizer, prompt_ids, 2)  # not the greedy completions


def test_a_merged_adapter_acts_like_the_unmerged_one_and_leaves_the_base_as_it_was(tokenizer, tmp_path) -> None:
    adapter = save_adapter(tmp_path / "adapter")
    ids = tokenizer("<｜User｜>Chest pain?<｜Assistant｜><think>\n", return_tensors="pt")["input_ids"]
    model = fresh_model(tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    storage = {name: p.data_ptr() for name, p in model.named_parameters()}
    with torch.no_grad():
        unmerged = PeftModel.from_pretrained(fresh_model(tokenizer), adapter)(ids).logits
        base = model(ids).logits
        with merged(model, str(adapter)) as with_adapter:
            assert with_adapter is model
            torch.testing.assert_close(with_adapter(ids).logits, unmerged, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(unmerged, base, atol=1e-3)
        torch.testing.assert_close(model(ids).logits, base, rtol=0, atol=0)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name  # restored bit for bit, not unmerged in rounding
        assert param.data_ptr() == storage[name], name  # in place: compiled steps keep their tensors


def test_engine_choice(tmp_path) -> None:
    assert resolve_engine(compose_eval(f"paths.output_dir={tmp_path}")) == "merged"  # the CPU runs merged
    assert resolve_engine(compose_eval("engine=peft", f"paths.output_dir={tmp_path}")) == "peft"
    val = compose_eval("benchmark=medical_o1_val", "engine=merged", f"paths.output_dir={tmp_path}")
    assert resolve_engine(val) == "peft"  # held-out loss is measured on the model as trained


def test_batch_size_one_and_auto_write_identical_predictions(tmp_path) -> None:
    """The must-hold of the fast path: the batch changes no completion, so it changes no score either."""
    rows = [
        {"id": f"q{i}", "question": QUESTIONS[i % len(QUESTIONS)] + " " * i, "options": ["yes", "no"], "answer": "A"}
        for i in range(7)
    ]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(json.dumps(r) for r in rows))
    adapter = save_adapter(tmp_path / "adapter")
    outputs: dict[str, Path] = {}
    # 100,000,000 slots for 7 rows: as many as there are rows, not a cache of 100,000,000 rows
    for engine, batch_size in (("merged", "1"), ("merged", "auto"), ("merged", "100000000"), ("peft", "3")):
        outputs[f"{engine}{batch_size}"] = out = tmp_path / f"{engine}{batch_size}"
        evaluate(
            compose_eval(
                "benchmark=mcq",
                f"benchmark.path={questions}",
                f"adapter_path={adapter}",
                "max_new_tokens=20",
                f"engine={engine}",
                f"batch_size={batch_size}",
                f"paths.output_dir={out}",
            )
        )
    predictions = {name: (out / "predictions.jsonl").read_text() for name, out in outputs.items()}
    reports = {name: json.loads((out / "report.json").read_text()) for name, out in outputs.items()}
    for report in reports.values():
        assert [row["batch_size"] for row in report.pop("speed")][:1] in ([1], [7], [3])  # timings: the run's own
    assert predictions["merged1"] == predictions["mergedauto"] == predictions["merged100000000"]
    assert reports["merged1"] == reports["mergedauto"] == reports["merged100000000"]
    assert predictions["merged1"] == predictions["peft3"]  # float32: merging changes no greedy choice here


def test_an_adapter_that_replaces_whole_modules_is_sent_to_the_peft_engine(tokenizer, tmp_path) -> None:
    """Merging can restore LoRA's base weights, not a module the adapter replaced: refused before any change."""
    model = fresh_model(tokenizer)
    config = LoraSpec(r=4, alpha=8).peft_config()
    config.modules_to_save = ["lm_head"]
    get_peft_model(fresh_model(tokenizer), config).save_pretrained(tmp_path / "adapter")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(ModelLoadError, match="engine=peft"), merged(model, str(tmp_path / "adapter")):
        pass
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_the_decoding_step_traces_as_one_graph_without_breaks(tokenizer, prompt_ids, attention) -> None:
    """What CUDA graphs need: the step (per-slot columns, mask and cache writes) is one graph, no breaks."""
    decoder = Decoder(fresh_model(tokenizer), max(map(len, prompt_ids)), 8, 2, compile=False, attention=attention)
    tokens = torch.full((2, 1), tokenizer.pad_token_id)
    with torch.inference_mode():
        explained = torch._dynamo.explain(decoder._forward)(tokens)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None, reason="torch.compile on the CPU needs a C++ compiler")
@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_the_compiled_step_decodes_as_the_eager_one_and_compiles_once(tokenizer, prompt_ids, attention) -> None:
    model = fresh_model(tokenizer)
    # 5 rows through 2 slots: rows end and slots are refilled mid-run; rows reach a second cache block.
    budgets = [3, 150, 1, 10, 90]
    assert max(len(p) + b for p, b in zip(prompt_ids, budgets)) > KV_BLOCK
    eager = decode(model, tokenizer, prompt_ids, 2, max_new_tokens=150, row_budgets=budgets)
    torch._dynamo.reset()
    compiled = Decoder(model, max(map(len, prompt_ids)), 150, 2, compile=True, attention=attention)
    special = {"eos_id": tokenizer.eos_token_id, "pad_id": tokenizer.pad_token_id, "progress": False}
    with torch._dynamo.config.patch(error_on_recompile=True):  # a second graph would mean a second capture
        for _ in range(2):
            assert compiled.decode(prompt_ids, row_budgets=budgets, **special) == eager


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_the_compiled_step_writes_into_the_cache_in_place(tokenizer, prompt_ids) -> None:
    """A step that allocated a buffer of a cache layer's shape would copy the whole cache at every step
    (inductor compiles a ``scatter_`` into the cache that way): most of a step's time at R1 lengths."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    decoder = Decoder(fresh_model(tokenizer), max(map(len, prompt_ids)), 8, 2, compile=True)
    layer = decoder.cache.layers[0]
    with torch.inference_mode():
        _, code = run_and_get_code(decoder.step, torch.full((2, 1), tokenizer.pad_token_id))
    assert "empty_strided" in "".join(code)  # the generated code allocates its buffers so
    assert f"empty_strided_cpu({tuple(layer.keys.shape)}" not in "".join(code)


@pytest.mark.parametrize(("capability", "flex"), [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_auto_attention_is_flex_only_on_gpus_its_kernels_are_built_for(monkeypatch, capability, flex) -> None:
    """V100 (7.0) and T4 (7.5) decode with SDPA; A100 (8.0) and H100 (9.0) with FlexAttention; a CPU with SDPA."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert flex_is_fast_on(torch.device("cuda", 0)) is flex
    assert flex_is_fast_on(torch.device("cpu")) is False


def test_decoding_past_the_models_context_or_beyond_memory_is_refused_before_any_cache(tokenizer) -> None:
    model = fresh_model(tokenizer)
    context = model.config.max_position_embeddings
    with pytest.raises(DecodingError, match=rf"make {context + 1} tokens, past the model's context of {context}"):
        Decoder(model, 100, context - 99, 1)
    with pytest.raises(
        DecodingError, match=r"^batch_size=10000000 rows of 256 tokens need .* GiB of KV cache, .* free"
    ):
        Decoder(model, 100, 100, 10_000_000)
