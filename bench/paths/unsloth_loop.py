"""(c) Unsloth's 4-bit model and "unsloth" gradient checkpointing, trained by the plain loop of bench.harness."""

from __future__ import annotations

from typing import Any

from bench import harness


def load_unsloth_model(settings: harness.Settings, checkpointing: str | bool = "unsloth") -> tuple[Any, Any]:
    """Unsloth QLoRA model in train mode, with the shared LoRA recipe; ``checkpointing`` is Unsloth's
    ``use_gradient_checkpointing`` ("unsloth": offloaded, False: none, as medllm's ``auto`` picks on a big GPU).

    ``import unsloth`` happens here, first, so that it patches transformers, peft and trl before anything
    else in the process imports them.
    """
    import unsloth  # noqa: F401  (patches transformers / peft / trl on import)
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=settings.checkpoint, max_seq_length=settings.seq, load_in_4bit=True, dtype=None
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=harness.LORA_RANK,
        lora_alpha=harness.LORA_ALPHA,
        lora_dropout=harness.LORA_DROPOUT,
        target_modules=list(harness.LORA_TARGETS),
        bias="none",
        use_gradient_checkpointing=checkpointing,
        random_state=settings.seed,
    )
    # from_pretrained hands the model back in eval mode, where Unsloth's checkpointing stays off.
    model.train()
    return model, tokenizer


def main() -> None:
    settings = harness.settings_from_args(harness.parse_path_args(__doc__))
    model, _ = load_unsloth_model(settings)
    harness.reset_peak_memory()
    meter = harness.train_plain_loop(model, harness.padded_batches(settings), settings.warmup)
    harness.emit_result("unsloth_loop", settings, meter)


if __name__ == "__main__":
    main()
