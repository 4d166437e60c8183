"""(e) transformers + bitsandbytes 4-bit (NF4, double quantization, bf16 compute) + PEFT LoRA, SDPA attention
and gradient checkpointing: the standard QLoRA recipe, trained by the plain loop of bench.harness."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from bench import harness


def load_hf_peft_model(settings: harness.Settings) -> torch.nn.Module:
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        settings.checkpoint,
        quantization_config=quantization,
        dtype=torch.bfloat16,
        attn_implementation="sdpa",
        device_map={"": torch.cuda.current_device()},
    )
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    lora = LoraConfig(
        r=harness.LORA_RANK,
        lora_alpha=harness.LORA_ALPHA,
        lora_dropout=harness.LORA_DROPOUT,
        target_modules=list(harness.LORA_TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def main() -> None:
    settings = harness.settings_from_args(harness.parse_path_args(__doc__))
    model = load_hf_peft_model(settings)
    harness.reset_peak_memory()
    meter = harness.train_plain_loop(model, harness.padded_batches(settings), settings.warmup)
    harness.emit_result("hf_peft", settings, meter)


if __name__ == "__main__":
    main()
