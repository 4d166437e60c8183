"""Exports: the merged 16-bit model computes what base + adapter compute; GGUF needs llama.cpp, said early."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from medllm.config.checks import check_train_config
from medllm.config.inputs import find_llama_cpp
from medllm.errors import ConfigError
from medllm.models.export import export_merged_16bit
from medllm.models.lora import LoraSpec
from medllm.models.tiny import tiny_llama
from tests.helpers.configs import compose_train


def test_merged_model_equals_base_plus_adapter(tokenizer, tmp_path):
    model_cfg = compose_train("experiment=smoke", f"paths.output_dir={tmp_path}").model
    tuned = get_peft_model(tiny_llama(tokenizer), LoraSpec(r=4, alpha=8).peft_config())
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # a trained-looking adapter (B starts at zero)
    tuned.save_pretrained(tmp_path / "adapter")
    merged_dir = export_merged_16bit(model_cfg, tokenizer, tmp_path / "adapter", tmp_path / "merged")

    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    ids = tokenizer("<｜User｜>Fever and a stiff neck?<｜Assistant｜>", return_tensors="pt")["input_ids"]
    reference = PeftModel.from_pretrained(tiny_llama(tokenizer), tmp_path / "adapter")
    with torch.no_grad():
        expected = reference.eval()(ids).logits
        torch.testing.assert_close(merged.eval()(ids).logits, expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(tiny_llama(tokenizer).eval()(ids).logits, expected, atol=1e-3)


def test_gguf_without_llama_cpp_is_a_config_error_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cfg = compose_train(
        "experiment=qlora_r16",
        "export.gguf=q4_k_m",
        f"export.llama_cpp_dir={tmp_path / 'none'}",
        f"paths.output_dir={tmp_path}",
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-quantize on PATH either
    with pytest.raises(ConfigError, match="GGUF export needs llama.cpp built with llama-quantize"):
        check_train_config(cfg)


def test_gguf_needs_the_unsloth_backend(tmp_path):
    cfg = compose_train("experiment=smoke", "export.gguf=q8_0", f"paths.output_dir={tmp_path}")
    with pytest.raises(ConfigError, match="export.gguf=q8_0 needs model.backend=unsloth"):
        check_train_config(cfg)


def test_llama_cpp_is_found_in_its_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    (tmp_path / "llama-quantize").write_text("")
    assert find_llama_cpp(tmp_path) == tmp_path
    with pytest.raises(ConfigError, match="export.llama_cpp_dir="):
        find_llama_cpp(tmp_path / "elsewhere")
