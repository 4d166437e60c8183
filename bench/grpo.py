"""GRPO step speed: medllm's GRPO stage beside TRL's GRPOTrainer on Unsloth, same prompts and settings, one call.

Every path runs in its own process, a step at a time on the same prompts (the packaged sample problems in
the R1 prompt format, `P` prompts x `G` completions a step), `--completion` new tokens at most per
completion, lr 1e-6, LoRA r16 on the seven projections, beta 0, the DAPO loss, temperature 1. The random
weights of `bench/make_checkpoint.py` never end a completion early: every completion runs to the limit,
which is the worst case a GRPO step meets. The reward is a completion's length in characters (it tells the
completions of a group apart, so every step trains).

Paths:

- `trl_unsloth`: Unsloth `FastLanguageModel` in 4-bit with `use_gradient_checkpointing="unsloth"` and TRL's
  `GRPOTrainer` without vLLM (rollouts through `model.generate`), as Unsloth's GRPO notebooks run where vLLM
  can't be installed;
- `medllm`: `train.py experiment=grpo_r16`: the 16-bit base (rounded through NF4) with the adapter, rollouts on
  the compiled slot-refill decoder reading the adapter being trained.

Reported per path and size: seconds a step (median of the timed steps, after `--warmup` steps), steps/s
against TRL's, rollout tokens/s (completion tokens over the time spent generating), the share of a step spent
generating, and peak GPU memory.

    python bench/make_checkpoint.py /tmp/r1-8b-random
    python bench/grpo.py --checkpoint /tmp/r1-8b-random --sizes 4x8,8x8 --completion 1024 \\
        --paths trl_unsloth,medllm --out bench/results/grpo.json
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from bench import harness  # noqa: E402
from bench.generation import run_streaming, write_results  # noqa: E402

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR = 1e-6


def parse_size(size: str) -> tuple[int, int]:
    """``"4x8"`` -> (4 prompts, 8 completions each) a step."""
    prompts, _, generations = size.partition("x")
    if not (prompts.isdigit() and generations.isdigit()) or int(prompts) < 1 or int(generations) < 2:
        raise ValueError(f"size {size!r} must be <prompts>x<completions per prompt>, e.g. 4x8 (completions >= 2)")
    return int(prompts), int(generations)


def prompt_texts(tokenizer: Any, count: int) -> list[str]:
    """The first ``count`` packaged sample problems as medllm's GRPO prompts them (R1 format, reasoning opened)."""
    from medllm.data.chat_format import R1ChatFormat
    from medllm.tasks.problems import SAMPLE_PROBLEMS, load_problems

    problems = load_problems(SAMPLE_PROBLEMS)
    problems = [problems[i % len(problems)] for i in range(count)]
    ids = R1ChatFormat().encode_generation_prompts(tokenizer, [p.prompt_text() for p in problems])
    return [tokenizer.decode(row) for row in ids]


def text_length(completions: list[Any], **kwargs: Any) -> list[float]:
    """Both paths' reward: a completion's length in characters / 1000 (TRL's signature)."""
    return [len(c if isinstance(c, str) else str(c)) / 1000 for c in completions]


def summarize(path: str, size: str, step_s: list[float], generate_s: list[float], tokens: list[int], **extra) -> dict:
    """One result from the timed steps: per-step seconds, seconds generating and completion tokens."""
    generating = sum(generate_s) if generate_s else None  # None: the path's generation could not be timed
    return {
        "path": path,
        "size": size,
        "step_s": statistics.median(step_s),
        "steps": len(step_s),
        "rollout_tokens_per_s": sum(tokens) / generating if generating else None,
        "generating_share": generating / sum(step_s) if generating else None,
        **extra,
    }


# ---------------------------------------------------------------------------------------------- paths


def run_trl_unsloth(args, prompts: int, generations: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from unsloth import FastLanguageModel  # before trl: Unsloth patches it on import

    model, tokenizer = FastLanguageModel.from_pretrained(
        args.checkpoint, max_seq_length=args.prompt_limit + args.completion, load_in_4bit=True, dtype=torch.bfloat16
    )
    model = FastLanguageModel.get_peft_model(
        model, r=16, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, use_gradient_checkpointing="unsloth"
    )
    total = args.warmup + args.steps
    dataset = Dataset.from_list([{"prompt": text} for text in prompt_texts(tokenizer, prompts * total)])
    generate_s: list[float] = []
    generate = model.generate

    def timed_generate(*a, **kw):
        harness.synchronize()
        start = time.perf_counter()
        out = generate(*a, **kw)
        harness.synchronize()
        generate_s.append(time.perf_counter() - start)
        return out

    model.generate = timed_generate  # what TRL calls without vLLM: the rollouts' time
    ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            if not ends:
                ends.append(time.perf_counter())

        def on_step_end(self, *a, **kw):
            harness.synchronize()
            ends.append(time.perf_counter())

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="grpo-bench-trl-"),
        learning_rate=LR,
        per_device_train_batch_size=prompts * generations,
        gradient_accumulation_steps=1,
        num_generations=generations,
        max_completion_length=args.completion,
        temperature=1.0,
        beta=0.0,
        loss_type="dapo",
        max_steps=total,
        logging_steps=1,
        bf16=True,
        use_vllm=False,
        report_to=[],
        save_strategy="no",
        shuffle_dataset=False,
        seed=args.seed,
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=[text_length],
        args=config,
        train_dataset=dataset,
        callbacks=[StepTimer()],
    )
    harness.reset_peak_memory()
    trainer.train()
    step_s = [b - a for a, b in itertools.pairwise(ends)][args.warmup :]
    tokens = [prompts * generations * args.completion] * len(step_s)  # random weights: every completion is full
    return summarize(
        "trl_unsloth", f"{prompts}x{generations}", step_s, generate_s[args.warmup :], tokens, peak_gib=_peak_gib()
    )


def medllm_command(args, prompts: int, generations: int, run_dir: Path, problems: Path) -> list[str]:
    """``train.py experiment=grpo_r16`` on the checkpoint, the bench's sizes and settings, no validation."""
    total = args.warmup + args.steps
    return [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "experiment=grpo_r16",
        f"model.name_or_path={args.checkpoint}",
        f"data.path={problems}",
        f"data.batch_size={prompts}",
        "data.val_size=1",
        f"stage.num_generations={generations}",
        f"stage.max_completion_length={args.completion}",
        "~stage.rewards.correctness",
        "~stage.rewards.format",
        "~stage.rewards.overlong",
        "+stage.rewards.length.fn._target_=bench.grpo.text_length",
        "stage.log_completions_every=0",
        f"max_seq_length={args.prompt_limit + args.completion}",
        f"optimizer.lr={LR}",
        "scheduler.num_warmup_steps=0",
        f"trainer.max_steps={total}",
        f"trainer.val_check_interval={total + 1}",
        "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1",
        "callbacks.checkpoint.every_n_train_steps=0",
        "logger=csv",
        f"seed={args.seed}",
        f"hydra.run.dir={run_dir}",
        *args.medllm_override,
    ]


def run_medllm(args, prompts: int, generations: int) -> dict:
    from medllm.tasks.problems import SAMPLE_PROBLEMS

    run_dir = Path(tempfile.mkdtemp(prefix="grpo-bench-medllm-")) / "run"
    # As many problems as the timed steps use, plus the one validation problem the data module holds out.
    rows = SAMPLE_PROBLEMS.read_text("utf-8").splitlines()
    needed = prompts * (args.warmup + args.steps) + 1
    problems = run_dir.parent / "problems.jsonl"
    problems.write_text("".join(rows[i % len(rows)] + "\n" for i in range(needed)))
    subprocess.run(medllm_command(args, prompts, generations, run_dir, problems), cwd=REPO_ROOT, check=True)
    with (run_dir / "csv" / "metrics.csv").open() as f:
        steps = [row for row in csv.DictReader(f) if row.get("perf/step_s")][args.warmup :]
    step_s = [float(row["perf/step_s"]) for row in steps]
    generate_s = [float(row["perf/rollout_share"]) * float(row["perf/step_s"]) for row in steps]
    tokens = [round(float(row["train/completion_length"]) * prompts * generations) for row in steps]
    summary = json.loads((run_dir / "summary.json").read_text())
    return summarize("medllm", f"{prompts}x{generations}", step_s, generate_s, tokens, peak_gib=summary["peak_mem_gib"])


def _peak_gib() -> float:
    return harness.peak_memory_gib()[0]


RUNNERS = {"trl_unsloth": run_trl_unsloth, "medllm": run_medllm}


# ---------------------------------------------------------------------------------------------- driver


def table(results: list[dict]) -> str:
    """Steps/s against TRL's at each size, beside rollout speed, the generating share and memory."""
    header = f"{'path':<14}{'size':>6}{'s/step':>9}{'vs trl':>8}{'rollout tok/s':>15}{'generating':>12}{'peak GiB':>10}"
    lines = [header]
    for size in dict.fromkeys(r["size"] for r in results):
        rows = [r for r in results if r["size"] == size]
        base = next((r for r in rows if r["path"] == "trl_unsloth"), None)
        for r in rows:
            ratio = f"{base['step_s'] / r['step_s']:.2f}x" if base else ""
            rate, share = r["rollout_tokens_per_s"], r["generating_share"]
            lines.append(
                f"{r['path']:<14}{size:>6}{r['step_s']:>9.2f}{ratio:>8}{f'{rate:,.0f}' if rate else '?':>15}"
                f"{f'{share:.0%}' if share else '?':>12}{r['peak_gib'] or 0:>10.1f}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--paths", default="trl_unsloth,medllm")
    parser.add_argument("--sizes", default="4x8,8x8", help="prompts x completions per prompt, a step")
    parser.add_argument("--completion", type=int, default=1024, help="most new tokens a completion")
    parser.add_argument("--prompt-limit", type=int, default=512, help="most prompt tokens")
    parser.add_argument("--warmup", type=int, default=1, help="steps run before the timed ones (compilation)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--medllm-override", action="append", default=[], help="a train.py override for the medllm path, repeatable"
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--path-timeout", type=float, default=None, help="seconds before a path is killed")
    parser.add_argument("--run-path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        sizes = [parse_size(size) for size in args.sizes.split(",")]
    except ValueError as err:
        parser.error(f"--sizes: {err}")
    if args.run_path:  # inside one path's process: one size
        (size,) = sizes
        print(harness.RESULT_PREFIX + json.dumps(RUNNERS[args.run_path](args, *size)), flush=True)
        return

    results: list[dict] = []
    for name in args.paths.split(","):
        if name not in RUNNERS:
            parser.error(f"--paths: unknown path {name!r}; choose from {', '.join(RUNNERS)}")
        for prompts, generations in sizes:
            argv = [a for a in sys.argv[1:] if a not in (args.out, "--out")]
            command = [sys.executable, __file__, *argv, "--run-path", name, "--sizes", f"{prompts}x{generations}"]
            print(f"[{name}] $ {' '.join(command)}", flush=True)

            def keep(result: dict, seconds: float) -> None:
                results.append(result | {"process_s": seconds})
                if args.out:  # after every result: a killed call keeps what it measured
                    write_results(Path(args.out), results)

            run_streaming(f"{name} {prompts}x{generations}", command, args.path_timeout, keep)
    print(table(results))


if __name__ == "__main__":
    main()
