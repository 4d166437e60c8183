"""Where a training step's time goes: one Unsloth QLoRA model, loaded once, trained a few steps per variant.

A variant is a batch layout trained by a runner. Layouts (``seq``-token sequences, ``bins`` per step):

* ``dense``: ``[bins, seq]`` random rows, every token trained, no attention mask (the fixed-mode batches
  of bench/throughput.py); ``dense_mask``: the same with the all-ones attention mask that medllm's
  collator passes;
* ``packed``: medical-o1-length rows packed by medllm (``pack`` into bins of ``seq``, ``PackCollator``)
  into one ``[1, T]`` row with restarting ``position_ids``, T the rows' sum (a new shape each step);
* ``packed_static``: the same padded to ``bins x seq`` tokens, one shape for every step (medllm's
  ``data.packed_static_shape``); ``packed_static_lengths``: also passing ``packed_seq_lengths``, as TRL does;
* ``padded``: 8 medical rows padded to the longest, with an attention mask (TRL without padding-free);
* ``medllm_rows``: the batches train.py trains on in bench/throughput.py's ``medllm`` path (text rows
  through medllm's DataModule: chat format, tokenization, collation), ``bins`` rows per step.

Runners: ``loop`` (bench.harness's plain loop, waiting for the GPU at each step end to time it;
``loop_async`` never waits, timed by CUDA events), ``math`` (the plain loop plus medllm's step arithmetic:
loss times trained tokens, gradients divided by them, norm clipping, backward inside autocast as under
Lightning; ``math_noclip`` and ``math_bwd_outside`` leave one of those out), ``lightning`` (medllm's
LightningModule in a bare Lightning Trainer, bf16-mixed, timed by CUDA events as it never waits for the
GPU either), ``trainpy`` (the module in the Trainer train.py builds for experiment=qlora_r16: its
callbacks, logger, schedule and clipping). Variants are ``layout:runner``.

    python bench/step_variants.py --checkpoint /tmp/r1-8b-random --out step_variants.json \\
        --variants dense:loop,dense:lightning,packed:loop,packed_static:loop
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import random
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import harness
from bench.paths.unsloth_loop import load_unsloth_model
from medllm.models import unsloth_varlen

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_VARIANTS = (
    "dense:loop,dense_mask:loop,dense:math,dense:lightning,"
    "packed:loop,packed_static:loop,packed_static_lengths:loop,padded:loop"
)


# ---------------------------------------------------------------- layouts


def with_counts(batch: dict) -> dict:
    """The batch with the CPU-side counts medllm's collators add (the module reads ``num_trained``)."""
    tokens, trained = harness.count_tokens(batch)
    return {**batch, "num_tokens": int(tokens), "num_trained": int(trained)}


def dense_batches(settings: harness.Settings, bins: int, mask: bool = False) -> list[dict]:
    rng = random.Random(settings.seed)
    batches = []
    for _ in range(settings.total_steps):
        ids = torch.tensor([[rng.randrange(*harness.TOKEN_ID_RANGE) for _ in range(settings.seq)] for _ in range(bins)])
        batch = {"input_ids": ids, "labels": ids.clone()}
        if mask:
            batch["attention_mask"] = torch.ones_like(ids)
        batches.append(with_counts(batch))
    return batches


def packed_batches(settings: harness.Settings, bins: int, static: bool, lengths: bool) -> list[dict]:
    from medllm.data.collate import PackCollator, pack

    rows = [
        {"input_ids": r.input_ids, "labels": r.labels}
        for r in harness.medical_rows_of(harness.medical_lengths(bins * settings.total_steps * 4, settings.seed), 0)
    ]
    groups = pack([len(r["input_ids"]) for r in rows], settings.seq)
    collate = PackCollator(harness.PAD_ID, pad_to_multiple_of=8, length=bins * settings.seq if static else None)
    batches = []
    for step in range(settings.total_steps):
        group = [[rows[i] for i in g] for g in groups[step * bins : (step + 1) * bins]]
        batch = collate(group)
        if lengths:
            row_lengths = [len(row["input_ids"]) for items in group for row in items]
            tail = batch["input_ids"].shape[1] - sum(row_lengths)
            batch["packed_seq_lengths"] = torch.tensor(row_lengths + ([tail] if tail else []), dtype=torch.int32)
        batches.append(batch)
    return batches


def padded_batches(settings: harness.Settings) -> list[dict]:
    rows = harness.medical_rows_of(harness.medical_lengths(8 * settings.total_steps, settings.seed), settings.seed)
    return [with_counts(harness.pad_batch(rows[i : i + 8])) for i in range(0, len(rows), 8)]


def compose_train_config(overrides: list[str]):
    """train.py's config for these overrides (``hydra.*`` ones left out: no run dir is made)."""
    from hydra import compose, initialize_config_dir

    from medllm.config.resolvers import register

    register()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[o for o in overrides if not o.startswith("hydra.")])


def medllm_rows_batches(settings: harness.Settings, bins: int) -> list[dict]:
    """What train.py trains on in throughput.py's ``medllm`` path, ``bins`` rows a step."""
    from hydra.utils import instantiate

    from bench.paths import medllm
    from medllm.models.backends import get_backend

    workdir = Path(tempfile.mkdtemp(prefix="medllm-rows-"))
    try:
        overrides = medllm.train_overrides(dataclasses.replace(settings, batch=bins), workdir, "unsloth")
        cfg = compose_train_config(overrides)
        datamodule = instantiate(cfg.data, tokenizer=get_backend(cfg.model.backend).load_tokenizer(cfg.model))
        datamodule.setup("fit")
        loader = iter(datamodule.train_dataloader())
        return [next(loader) for _ in range(settings.total_steps)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


LAYOUTS: dict[str, Callable[[harness.Settings, int], list[dict]]] = {
    "dense": dense_batches,
    "dense_mask": functools.partial(dense_batches, mask=True),
    "packed": functools.partial(packed_batches, static=False, lengths=False),
    "packed_static": functools.partial(packed_batches, static=True, lengths=False),
    "packed_static_lengths": functools.partial(packed_batches, static=True, lengths=True),
    "padded": lambda settings, bins: padded_batches(settings),
    "medllm_rows": medllm_rows_batches,
}


# ---------------------------------------------------------------- runners


def run_loop(model: torch.nn.Module, batches: list[dict], warmup: int) -> harness.ThroughputMeter:
    return harness.train_plain_loop(model, batches, warmup)


def run_loop_async(model: torch.nn.Module, batches: list[dict], warmup: int) -> harness.ThroughputMeter:
    """The plain loop never waiting for the GPU (timed by CUDA events)."""
    return harness.train_plain_loop(model, batches, warmup, harness.AsyncThroughputMeter(warmup))


def run_math(
    model: torch.nn.Module, batches: list[dict], warmup: int, clip: bool = True, backward_in_autocast: bool = True
) -> harness.ThroughputMeter:
    """The plain loop with medllm's arithmetic: summed token loss, gradients over trained tokens, clipping,
    and (as under Lightning's bf16-mixed) the backward inside the autocast region."""
    device = next(p for p in model.parameters() if p.requires_grad).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=harness.LEARNING_RATE, fused=True)
    meter = harness.ThroughputMeter(warmup)
    model.train()
    for batch in batches:
        meter.count(batch)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss_sum = model(**harness.model_inputs(batch, device), use_cache=False).loss.float() * batch["num_trained"]
            if backward_in_autocast:
                loss_sum.backward()
        if not backward_in_autocast:
            loss_sum.backward()
        if not math.isfinite(loss_sum.item()):
            raise RuntimeError("non-finite loss")
        torch._foreach_mul_([p.grad for p in params], 1.0 / batch["num_trained"])
        if clip:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter.step_end()
    return meter


def fit_with_meter(model: torch.nn.Module, batches: list[dict], warmup: int, build) -> harness.ThroughputMeter:
    """Fits the module that ``build(callbacks)`` returns with its Trainer, on ``batches``, timed by CUDA
    events: like train.py, the module never waits for the GPU at a step, so neither does the meter."""
    import lightning as L

    meter = harness.AsyncThroughputMeter(warmup)

    class Meter(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            meter.count(batch)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            meter.step_end()

    module, trainer = build([Meter()])
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b, pin_memory=True)
    device = next(model.parameters()).device
    trainer.fit(module, train_dataloaders=loader)
    model.to(device)  # Lightning's teardown moved it to the CPU; the next variant trains it on the GPU
    return meter


def run_lightning(model: torch.nn.Module, batches: list[dict], warmup: int) -> harness.ThroughputMeter:
    """medllm's ReasoningSFTModule in a bare Lightning Trainer (no logger, callbacks or schedule)."""
    import lightning as L

    from medllm.training.module import ReasoningSFTModule

    def build(callbacks):
        optimizer = functools.partial(torch.optim.AdamW, lr=harness.LEARNING_RATE, fused=True)
        trainer = L.Trainer(
            accelerator="auto",
            devices=1,
            precision="bf16-mixed",
            max_steps=len(batches),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=callbacks,
        )
        return ReasoningSFTModule(model, optimizer=optimizer), trainer

    return fit_with_meter(model, batches, warmup, build)


def run_trainpy(model: torch.nn.Module, batches: list[dict], warmup: int) -> harness.ThroughputMeter:
    """The module in the Trainer that train.py builds for ``experiment=qlora_r16``: its callbacks (checkpoints,
    progress bar, throughput), CSV logger, cosine schedule and clipping, on the same in-memory batches.
    Against ``lightning``: what train.py's Trainer adds; against throughput.py's ``medllm`` path: what its
    data pipeline adds."""
    from hydra.utils import instantiate

    from medllm.training.callbacks import ThroughputMonitor
    from medllm.training.fit import build_trainer
    from medllm.training.module import ReasoningSFTModule

    out = tempfile.mkdtemp(prefix="step-variants-")
    overrides = [
        "experiment=qlora_r16",
        f"paths.output_dir={out}",
        f"trainer.max_steps={len(batches)}",
        "trainer.max_epochs=-1",
        "trainer.limit_val_batches=0",
        "trainer.accumulate_grad_batches=1",
        "scheduler.num_warmup_steps=0",
        *([] if torch.cuda.is_available() else ["hardware=cpu"]),
    ]
    cfg = compose_train_config(overrides)

    def build(callbacks):
        module = ReasoningSFTModule(
            model,
            optimizer=instantiate(cfg.optimizer),
            scheduler=instantiate(cfg.scheduler),
            gradient_clip_val=cfg.trainer.gradient_clip_val,
        )
        callbacks = [instantiate(c) for c in cfg.callbacks.values()] + [ThroughputMonitor(warmup), *callbacks]
        return module, build_trainer(cfg, callbacks)

    try:
        return fit_with_meter(model, batches, warmup, build)
    finally:
        shutil.rmtree(out, ignore_errors=True)


RUNNERS = {
    "loop": run_loop,
    "loop_async": run_loop_async,
    "math": run_math,
    "math_noclip": functools.partial(run_math, clip=False),
    "math_bwd_outside": functools.partial(run_math, backward_in_autocast=False),
    "lightning": run_lightning,
    "trainpy": run_trainpy,
}


# ---------------------------------------------------------------- main


def profile_variant(model: torch.nn.Module, runner: Callable, batches: list[dict], path: Path) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        runner(model, batches, 1)
    averages = prof.key_averages()
    path.write_text(
        "by GPU time\n"
        + averages.table(sort_by="cuda_time_total", row_limit=40)
        + "\n\nby CPU self time\n"
        + averages.table(sort_by="self_cpu_time_total", row_limit=30)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_settings_arguments(parser)
    parser.add_argument("--bins", type=int, default=3, help="sequences of `seq` tokens per step")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated layout:runner")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--profile", default="", help="layout:runner=FILE,...: profiler tables of 3 steps")
    parser.add_argument(
        "--checkpointing",
        choices=("unsloth", "off"),
        default="unsloth",
        help="Unsloth's offloaded gradient checkpointing, or none (what medllm's auto picks where memory allows)",
    )
    parser.add_argument(
        "--packed-attention",
        choices=("varlen", "segments"),
        default="varlen",
        help="packed rows through torch's varlen flash kernel, as train.py runs them (medllm supplies "
        "enable_gqa on torch 2.11), or Unsloth as it comes there: one SDPA call per run of equal lengths",
    )
    args = parser.parse_args()
    settings = harness.settings_from_args(args)
    variants = [v.split(":") for v in args.variants.split(",")]
    unknown = [v for v in variants if len(v) != 2 or v[0] not in LAYOUTS or v[1] not in RUNNERS]
    if unknown:
        parser.error(f"unknown variants {unknown}; layouts {sorted(LAYOUTS)}, runners {sorted(RUNNERS)}")
    model, _ = load_unsloth_model(settings, "unsloth" if args.checkpointing == "unsloth" else False)
    if args.packed_attention == "varlen":
        unsloth_varlen.install()

    results: list[dict[str, Any]] = []
    for layout, runner in variants:
        batches = LAYOUTS[layout](settings, args.bins)
        harness.reset_peak_memory()
        try:
            summary = RUNNERS[runner](model, batches, settings.warmup).summary()
        except Exception as err:  # one failing variant must not cost the others' numbers
            traceback.print_exc()
            summary = {"error": f"{type(err).__name__}: {err}"}
        shapes = sorted({tuple(b["input_ids"].shape) for b in batches})
        results.append(
            {
                "variant": f"{layout}:{runner}",
                **summary,
                "peak_gib": harness.peak_memory_gib()[0],
                "shapes": [list(s) for s in shapes],
            }
        )
        print(json.dumps(results[-1]), flush=True)
        if args.out:
            report = {
                "card": harness.device_name(),
                "settings": dataclasses.asdict(settings),
                "bins": args.bins,
                "checkpointing": args.checkpointing,
                "packed_attention": args.packed_attention,
            }
            args.out.write_text(json.dumps({**report, "results": results}, indent=1))
    for request in filter(None, args.profile.split(",")):
        variant, path = request.split("=")
        layout, runner = variant.split(":")
        try:
            profile_variant(model, RUNNERS[runner], LAYOUTS[layout](settings, args.bins)[:3], Path(path))
        except Exception:
            traceback.print_exc()

    print(
        f"\n{harness.device_name()}, {args.bins} x {settings.seq} tokens a step, {settings.steps} timed steps, "
        f"checkpointing {args.checkpointing}, packed attention {args.packed_attention}"
    )
    print(f"{'variant':<30}{'tokens/step':>12}{'step s':>9}{'tokens/s':>10}{'label tok/s':>12}{'peak GiB':>10}")
    for r in results:
        if "error" in r:
            print(f"{r['variant']:<30}{r['error']}")
            continue
        print(
            f"{r['variant']:<30}{r['tokens'] / r['steps']:>12,.0f}{r['step_s_median']:>9.3f}"
            f"{r['tokens_per_s']:>10,.0f}{r['label_tokens_per_s']:>12,.0f}{r['peak_gib']:>10.2f}"
        )


if __name__ == "__main__":
    main()
