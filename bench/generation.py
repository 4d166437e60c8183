"""Generation speed: medllm's evaluation engine beside the libraries it is built on, all in one call.

Every path runs in its own process on the same prompts (random token ids, 300-500 tokens, seeded),
sorted longest first and batched alike, greedy:

| path | what it is |
|---|---|
| `medllm` | eval.py's merged engine: the base rounded through NF4 as QLoRA trained on it (then the |
|  | adapter merged in); static KV cache, a compiled step with CUDA graphs, FlexAttention decoding (on a |
|  | GPU, as eval.py's `decode_attention=auto`): each row reads the cache blocks up to its own column only |
| `medllm_sdpa` | the same with `decode_attention=sdpa`: each row attends over the whole cache under a mask |
| `unsloth_generate` | Unsloth 4-bit, `FastLanguageModel.for_inference`, plain `model.generate` |
| `hf_generate` | transformers bf16, SDPA, plain `model.generate` |

Modes: `fixed` (every row generates `--new-tokens` tokens) and `r1` (each row stops at its own length,
drawn like R1 reasoning, N(1000, 400) clipped to 64..`--new-tokens`, by forcing EOS there; the measure is
useful tokens/s, the tokens before each row's EOS). Each mode is timed after a warm-up call (compilation,
allocator); medllm's first-call time, compilation included, is reported too.

    python bench/make_checkpoint.py /tmp/r1 --adapter /tmp/r1-adapter
    python bench/generation.py --checkpoint /tmp/r1 --adapter /tmp/r1-adapter --modes fixed,r1 \\
        --paths hf_generate,unsloth_generate,medllm --out bench/results/generation.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from bench import harness  # noqa: E402
from bench.throughput import package_versions  # noqa: E402

PROMPT_LENGTHS = (300, 500)
R1_LENGTH_MEAN, R1_LENGTH_STD, R1_LENGTH_MIN = 1000, 400, 64
EOS_ID = 128001  # the R1 tokenizer's <｜end▁of▁sentence｜>
PAD_ID = 0
WARMUP_TOKENS = 256  # new tokens of a plain path's untimed first call: a whole fixed-mode call


def workload(mode: str, count: int, new_tokens: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """Prompts and each row's budget of new tokens."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(1000, 128000) for _ in range(rng.randint(*PROMPT_LENGTHS))] for _ in range(count)]
    if mode == "fixed":
        return prompts, [new_tokens] * count
    lengths = [int(rng.gauss(R1_LENGTH_MEAN, R1_LENGTH_STD)) for _ in range(count)]
    return prompts, [max(R1_LENGTH_MIN, min(new_tokens, n)) for n in lengths]


def useful(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids


# ---------------------------------------------------------------------------------------------- paths


def _generate_in_batches(
    model, prompts, budgets, batch: int, fixed: bool, seconds: float | None = None
) -> list[list[int]]:
    """Plain ``model.generate`` over batches of left-padded prompts, longest first; R1 lengths by forced EOS.

    ``seconds`` runs the first batch only and stops it then (``generate``'s ``max_time``): its rows keep the
    tokens they have. The completions of the prompts run, in their order."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class ForceEOS(LogitsProcessor):
        def __init__(self, lengths: list[int], width: int) -> None:
            self.lengths, self.width = torch.tensor(lengths, device=model.device), width

        def __call__(self, input_ids, scores):
            done = self.lengths <= input_ids.shape[1] - self.width
            scores[done] = float("-inf")
            scores[done, EOS_ID] = 0.0
            return scores

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    if seconds is not None:
        order = order[:batch]
    out: list[list[int] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        steps = max(budgets[i] for i in rows)
        extra = (
            {"min_new_tokens": steps}
            if fixed
            else {"logits_processor": LogitsProcessorList([ForceEOS([budgets[i] for i in rows], width)])}
        )
        new = model.generate(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=steps,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            max_time=seconds,
            **extra,
        )[:, width:].tolist()
        for r, i in enumerate(rows):
            out[i] = useful(new[r])
    return [c for c in out if c is not None]


def run_plain(args, load) -> Iterator[dict[str, Any]]:
    model = load()
    for mode in args.modes:
        prompts, budgets = workload(mode, args.prompts[mode], args.new_tokens[mode], args.seed)
        if mode in args.plain_prompts:  # a slow path times the first prompts of the same workload
            prompts, budgets = prompts[: args.plain_prompts[mode]], budgets[: args.plain_prompts[mode]]
        batch = int(args.batch) if args.batch != "auto" else 64
        warmup = [min(b, WARMUP_TOKENS) for b in budgets[:batch]]
        _generate_in_batches(model, prompts[:batch], warmup, batch, mode == "fixed")  # a whole batch, warm-up
        harness.reset_peak_memory()
        start = time.perf_counter()
        cap = args.plain_seconds.get(mode)
        completions = _generate_in_batches(model, prompts, budgets, batch, mode == "fixed", cap)
        harness.synchronize()
        seconds = time.perf_counter() - start
        # Cut short, a batch has run its first steps only, when most of its rows are still going and the
        # cache is shortest: its tokens/s then is more than the whole batch's would be, not less.
        cut = cap is not None and seconds >= cap
        yield result(args, mode, "", seconds, completions, batch, **({"cut_at_s": cap} if cut else {}))


def load_unsloth(args):
    import unsloth  # noqa: F401  (patches transformers first)
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(
        model_name=args.checkpoint, max_seq_length=4096, load_in_4bit=True, dtype=None
    )
    FastLanguageModel.for_inference(model)
    return model


def load_hf(args):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        args.checkpoint,
        dtype=torch.bfloat16,
        attn_implementation="sdpa",
        device_map={"": 0 if torch.cuda.is_available() else "cpu"},
    ).eval()


def run_medllm(args) -> Iterator[dict[str, Any]]:
    """eval.py's merged engine as ``medllm.evaluation.evaluate.evaluate`` drives it: one base, the adapter merged in."""
    from omegaconf import OmegaConf

    from medllm.generation.decoding import Decoder
    from medllm.generation.merged import each_merged_model

    model_cfg = OmegaConf.load(REPO_ROOT / "conf/model/r1_distill_llama_8b.yaml")
    model_cfg.name_or_path, model_cfg.max_seq_length = args.checkpoint, 4096
    model_cfg.merge_with_dotlist(args.model_override)
    decoders = {}
    batch = None if args.batch == "auto" else int(args.batch)
    attention = "sdpa" if args.run_path == "medllm_sdpa" else "auto"
    for adapter, model in each_merged_model(model_cfg, None, [args.adapter] if args.adapter else []):
        label = "base" if adapter is None else f"adapter:{adapter}"
        for mode in args.modes:
            prompts, budgets = workload(mode, args.prompts[mode], args.new_tokens[mode], args.seed)
            first_s = None
            if mode not in decoders:  # the first model of the run compiles; the others reuse it
                start = time.perf_counter()
                decoders[mode] = Decoder(
                    model, max(map(len, prompts)), args.new_tokens[mode], batch, len(prompts), attention=attention
                )
                # Compiles and captures the step, whose shapes are the slots' whatever the prompts: one will do.
                decoders[mode].decode(prompts[:1], eos_id=EOS_ID, pad_id=PAD_ID, row_budgets=[32])
                first_s = time.perf_counter() - start
            harness.reset_peak_memory()
            start = time.perf_counter()
            completions = decoders[mode].decode(prompts, eos_id=EOS_ID, pad_id=PAD_ID, row_budgets=budgets)
            harness.synchronize()
            seconds = time.perf_counter() - start
            extra = {"warmup_s": first_s}
            if label == "base" and mode == "fixed":  # the same weights through plain generate, for agreement
                implementation = model.config._attn_implementation
                model.set_attn_implementation("sdpa")
                plain = _generate_in_batches(model, prompts, budgets, decoders[mode].batch_size, fixed=False)
                extra |= agreement(completions, plain) | parting_margins(model, prompts, completions, plain)
                model.set_attn_implementation(implementation)
            yield result(args, mode, label, seconds, completions, decoders[mode].batch_size, **extra)


def agreement(fast: list[list[int]], plain: list[list[int]]) -> dict[str, float]:
    """How far greedy completions of the same weights agree: whole rows, and tokens before they part."""
    common = []
    for a, b in zip(fast, plain, strict=True):
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        common.append(same / max(len(a), len(b), 1))
    return {
        "identical_to_plain_generate": sum(a == b for a, b in zip(fast, plain)) / len(fast),
        "mean_share_before_divergence": sum(common) / len(common),
    }


@torch.inference_mode()
def parting_margins(model, prompts, fast, plain) -> dict[str, float | None]:
    """Plain generate's top-1 minus top-2 logit where the two parted, beside its median over all tokens.

    A random-weight model's logits are nearly flat, so bf16 rounding flips greedy choices: a parting at a
    margin far below the typical one is rounding, not a wrong step.
    """
    where_parted, everywhere = [], []
    for prompt, a, b in zip(prompts, fast, plain, strict=True):
        ids = torch.tensor([list(prompt) + b], device=model.device)
        logits = model(ids, logits_to_keep=len(b) + 1).logits[0, :-1].float()  # the logits that chose b
        top = logits.topk(2, dim=-1).values
        margins = (top[:, 0] - top[:, 1]).tolist()
        everywhere += margins
        parted = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if parted is not None:
            where_parted.append(margins[parted])
    return {
        "median_margin_where_parted": statistics.median(where_parted) if where_parted else None,
        "median_margin": statistics.median(everywhere),
    }


def result(args, mode: str, model: str, seconds: float, completions: list[list[int]], batch: int, **extra) -> dict:
    tokens = sum(len(c) for c in completions)
    peak, _ = harness.peak_memory_gib()
    name = args.run_path + (f"[{model.split(':')[0]}]" if model else "")  # medllm[base], medllm[adapter]
    out = Path(args.workdir) / f"{name}_{mode}.json"
    out.write_text(json.dumps(completions))
    return {
        "path": name,
        "mode": mode,
        "prompts": len(completions),
        "batch": batch,
        "seconds": seconds,
        "new_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "peak_gib": peak,
        "completions_file": str(out),
        **extra,
    }


# ---------------------------------------------------------------------------------------------- driver


def run_streaming(name: str, command: list[str], timeout: float | None, on_result) -> None:
    """Runs one path, echoing its output with a prefix as it comes (a killed path still shows how far it got)
    and handing each result line to ``on_result`` as it arrives, with the seconds since the path started."""
    start = time.perf_counter()
    with subprocess.Popen(
        command, cwd=REPO_ROOT, env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        killer = threading.Timer(timeout, process.kill) if timeout else None
        if killer:
            killer.start()
        for line in process.stdout:
            print(f"[{name}] {line}", end="", flush=True)
            if line.startswith(harness.RESULT_PREFIX):
                on_result(json.loads(line[len(harness.RESULT_PREFIX) :]), time.perf_counter() - start)
        if killer:
            killer.cancel()
        if process.wait():
            print(f"[{name}] exited with {process.returncode}", flush=True)


def write_results(out: Path, results: list[dict]) -> None:
    record = {"card": harness.device_name(), "versions": package_versions(), "argv": sys.argv[1:], "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")


def table(results: list[dict]) -> str:
    lines = []
    for mode in dict.fromkeys(r["mode"] for r in results):
        rows = [r for r in results if r["mode"] == mode]
        base = next((r for r in rows if r["path"] == "unsloth_generate"), None)
        lines += [
            f"\n{mode}: new tokens/s (useful: before EOS)",
            f"{'path':<38}{'prompts':>8}{'batch':>7}{'tok/s':>10}{'s':>8}{'peak GiB':>10}{'vs unsloth':>12}",
        ]
        for r in rows:
            ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else ""
            path = r["path"] + (f" (cut at {r['cut_at_s']:.0f} s)" if "cut_at_s" in r else "")
            lines.append(
                f"{path:<38}{r['prompts']:>8}{r['batch']:>7}{r['tokens_per_s']:>10,.0f}"
                f"{r['seconds']:>8.1f}{r['peak_gib']:>10.1f}{ratio:>12}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--adapter", default=None, help="a LoRA adapter of the checkpoint for medllm to merge")
    parser.add_argument(
        "--model-override",
        action="append",
        default=[],
        help="a key=value of medllm's model config (conf/model/r1_distill_llama_8b.yaml), repeatable: "
        "load_in_4bit=false scores adapters trained on the 16-bit base (experiment=lora_r16)",
    )
    parser.add_argument(
        "--paths",
        default="hf_generate,unsloth_generate,medllm",
        help="comma-separated; name@mode+mode runs a path in its own modes, e.g. hf_generate@fixed",
    )
    parser.add_argument("--modes", default="fixed,r1")
    parser.add_argument("--prompts", default="fixed=64,r1=512", help="prompts per mode, e.g. fixed=64,r1=512")
    parser.add_argument(
        "--plain-prompts",
        default="",
        help="unsloth_generate and hf_generate time only the first N prompts of a mode, e.g. r1=64",
    )
    parser.add_argument(
        "--plain-seconds",
        default="",
        help="unsloth_generate and hf_generate time a mode's first batch only, stopped after N seconds, e.g. "
        "r1=60 (their tokens/s so far is then an upper bound: a batch's first steps have the most rows running)",
    )
    parser.add_argument("--batch", default="64", help="rows per batch, or auto (medllm: as many as fit)")
    parser.add_argument("--medllm-batch", default=None, help="medllm's batch if not --batch, e.g. auto")
    parser.add_argument("--new-tokens", default="fixed=256,r1=2048", help="most new tokens a row, per mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--path-timeout", type=float, default=None, help="seconds before a path is killed")
    parser.add_argument("--run-path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="/tmp/medllm-generation-bench", help="completions of each path")
    args = parser.parse_args()
    args.modes = args.modes.split(",")
    try:
        args.prompts, args.new_tokens, args.plain_prompts, args.plain_seconds = (
            {k: int(v) for k, v in (i.split("=") for i in a.split(",") if i)}
            for a in (args.prompts, args.new_tokens, args.plain_prompts, args.plain_seconds)
        )
    except ValueError:
        parser.error("--prompts, --new-tokens, --plain-prompts, --plain-seconds take mode=number pairs, e.g. r1=512")
    if any(seconds <= 0 for seconds in args.plain_seconds.values()):
        parser.error(f"--plain-seconds: seconds must be > 0, not {args.plain_seconds}")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.run_path:  # inside one path's process
        runners = {
            "medllm": lambda: run_medllm(args),
            "medllm_sdpa": lambda: run_medllm(args),
            "unsloth_generate": lambda: run_plain(args, lambda: load_unsloth(args)),
            "hf_generate": lambda: run_plain(args, lambda: load_hf(args)),
        }
        for r in runners[args.run_path]():
            print(harness.RESULT_PREFIX + json.dumps(r), flush=True)
        return

    results: list[dict] = []
    for spec in args.paths.split(","):
        name, _, modes = spec.partition("@")  # e.g. unsloth_generate@fixed+r1: this path's own modes
        batch = args.medllm_batch if name.startswith("medllm") and args.medllm_batch else args.batch
        argv = [a for a in sys.argv[1:] if a not in (args.out, "--out")]
        command = [sys.executable, __file__, *argv, "--run-path", name, "--batch", batch]
        command += ["--modes", modes.replace("+", ",")] if modes else []
        print(f"[{name}] $ {' '.join(command)}", flush=True)

        def keep(result: dict, seconds: float) -> None:
            # process_s: the path's process until this result: imports, loading, compiling, earlier modes.
            results.append(result | {"process_s": seconds})
            if args.out:  # after every result: a killed or timed-out call keeps what it measured
                write_results(Path(args.out), results)

        run_streaming(name, command, args.path_timeout, keep)
    print(table(results))
    for r in results:
        if "identical_to_plain_generate" in r:
            print(
                f"{r['path']} {r['mode']}: {r['identical_to_plain_generate']:.0%} of completions identical to plain "
                f"generate on the same weights; on average {r['mean_share_before_divergence']:.0%} of a "
                "completion comes before the first differing token"
            )


if __name__ == "__main__":
    main()
