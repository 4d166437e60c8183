"""(d) Unsloth's model trained by TRL's SFTTrainer, the path of the Unsloth notebooks.

Rows go in pre-tokenized (``input_ids`` + ``labels``), so TRL only batches them. By default the trainer
is left to choose its batching, as in the notebooks: Unsloth turns TRL's padding-free batching on by
itself where it judges it faster (on H100/H200 always). ``--padded`` sets ``padding_free=False``: each
batch is padded to its longest row. The result records which batching ran.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from bench import harness
from bench.paths.unsloth_loop import load_unsloth_model


def meter_callback(meter: harness.ThroughputMeter) -> Any:
    """A TrainerCallback ending a meter step at each optimizer step (built here: transformers must be
    imported after unsloth)."""
    from transformers import TrainerCallback

    class MeterCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.step_end()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                meter.last_loss = logs["loss"]

    return MeterCallback()


def count_model_inputs(meter: harness.ThroughputMeter, seen: dict[str, str]):
    """Forward pre-hook counting what the trainer really feeds the model (after its collator) and noting,
    in ``seen``, the keyword arguments of the first call. Forwards without gradients (metrics that some TRL
    settings compute from a second forward) are not training."""

    def hook(module, args, kwargs):
        if not torch.is_grad_enabled():
            return
        if "input_ids" not in kwargs or "labels" not in kwargs:
            raise RuntimeError(f"expected input_ids and labels as keyword arguments, got {sorted(kwargs)}")
        if not seen:
            seen.update({k: describe(v) for k, v in kwargs.items()})
        meter.count(kwargs)

    return hook


def describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} {list(value.shape)}" + (f" {value.tolist()}" if value.numel() <= 16 else "")
    return repr(value)


def build_trainer(model: Any, tokenizer: Any, settings: harness.Settings, padded: bool, output_dir: str) -> Any:
    """An SFTTrainer over the harness rows whose steps and model inputs feed ``trainer.meter``;
    ``trainer.model_inputs`` describes the first batch the model receives."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = harness.make_rows(settings)
    dataset = Dataset.from_dict({"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows]})
    meter = harness.ThroughputMeter(settings.warmup)
    config = SFTConfig(
        output_dir=output_dir,
        per_device_train_batch_size=settings.batch,
        gradient_accumulation_steps=1,
        max_steps=settings.total_steps,
        learning_rate=harness.LEARNING_RATE,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch_fused",
        bf16=True,
        max_length=settings.seq,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=settings.seed,
        **({"padding_free": False} if padded else {}),
    )
    trainer = SFTTrainer(
        model=model, processing_class=tokenizer, train_dataset=dataset, args=config, callbacks=[meter_callback(meter)]
    )
    trainer.model_inputs = {}
    trainer.model.register_forward_pre_hook(count_model_inputs(meter, trainer.model_inputs), with_kwargs=True)
    trainer.meter = meter
    return trainer


def main() -> None:
    args = harness.parse_path_args(
        __doc__, {"--padded": {"action": "store_true", "help": "padding_free=False: pad batches to the longest row"}}
    )
    settings = harness.settings_from_args(args)
    model, tokenizer = load_unsloth_model(settings)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(model, tokenizer, settings, args.padded, output_dir)
        harness.reset_peak_memory()
        trainer.train()
    name = "unsloth_trl_padded" if args.padded else "unsloth_trl"
    harness.emit_result(
        name,
        settings,
        trainer.meter,
        padding_free=bool(trainer.args.padding_free),
        model_inputs=trainer.model_inputs,
    )


if __name__ == "__main__":
    main()
