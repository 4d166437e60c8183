"""Data pipeline benchmark: format + tokenize 20,000 rows of medical-o1 length, cold and cached.

    python bench/data_pipeline.py [--rows 20000] [--tokenizer PATH_OR_HUB_ID] [--out bench/results/data_pipeline.json]

Rows are ~2,900 characters (medical-o1's mean), made by recombining sentences of the packaged sample
rows (or of --source, a medical-o1 style file). The tokenizer is --tokenizer if given (e.g. the R1
distill tokenizer in the local cache), else a 32k byte-level BPE trained in-process on the rows, so
token counts are of the right order. Prints a table and writes JSON:
- cold: validation + formatting + tokenization + cache write, from an empty cache;
- cached: a second DataModule over the same input and settings (reads the cache);
- sequence fill (row tokens / sequence tokens) and trained-token share (trained / sequence tokens),
  padded (random batches of 8, padded to the longest row) vs packed (sequences of --max-seq-length).
  The trained share is lower than the fill by the prompt's share, which is never trained.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from medllm.data.collate import pack
from medllm.data.datamodule import ReasoningDataModule
from medllm.data.records import sample_rows
from medllm.models.tiny import train_r1_tokenizer

TARGET_CHARS = 2_900


def synthetic_rows(n: int, source: list[dict], seed: int = 0) -> list[dict]:
    """Rows of ~TARGET_CHARS characters (normal spread) built from the sentences of ``source``."""
    rng = random.Random(seed)
    sentences = [s.strip() + "." for row in source for v in row.values() for s in str(v).split(".") if s.strip()]
    rows = []
    for i in range(n):
        target = max(800, int(rng.gauss(TARGET_CHARS, 700)))
        parts = []
        while sum(map(len, parts)) < target:
            parts.append(rng.choice(sentences))
        q, c, r = max(1, len(parts) // 6), max(1, len(parts) * 2 // 3), len(parts)
        rows.append(
            {
                "Question": f"Case {i}: " + " ".join(parts[:q]),
                "Complex_CoT": " ".join(parts[q:c]),
                "Response": " ".join(parts[c:r]) or "See above.",
            }
        )
    return rows


def padded_tokens(lengths: np.ndarray, batch_size: int, seed: int = 0) -> int:
    """Sequence tokens of random batches padded to their longest row."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(len(b) * int(lengths[b].max()) for b in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--source", help="a .json/.jsonl file of medical-o1 rows to draw sentences from")
    parser.add_argument("--tokenizer", help="tokenizer folder or hub id (default: a 32k BPE trained here)")
    parser.add_argument("--max-seq-length", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-proc", type=int, default=1, help="data.num_proc (1: the tokenizer's own threads)")
    parser.add_argument("--out", default="bench/results/data_pipeline.json")
    args = parser.parse_args()

    if args.source:
        text = Path(args.source).read_text()
        source = json.loads(text) if args.source.endswith(".json") else [json.loads(x) for x in text.splitlines() if x]
        source = [{k: r[k] for k in ("Question", "Complex_CoT", "Response")} for r in source]
    else:
        source = sample_rows()
    rows = synthetic_rows(args.rows, source)

    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        tokenizer_name = args.tokenizer
    else:
        texts = (" ".join(r.values()) for r in rows[:2000])
        tokenizer = train_r1_tokenizer(texts, vocab_size=32_000)
        tokenizer_name = "byte-level BPE, 32k, trained on the rows"

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        settings = dict(
            source="local",
            path=str(path),
            max_seq_length=args.max_seq_length,
            num_proc=args.num_proc,
            cache_dir=str(Path(tmp) / "cache"),
            val_size=0.01,
            phi_check="warn",
        )
        timings = {}
        for phase in ("cold", "cached"):
            start = time.perf_counter()
            dm = ReasoningDataModule(tokenizer, **settings)
            dm.setup("fit")
            timings[phase] = time.perf_counter() - start
        train = dm.splits["train"]
        lengths = np.asarray(train["length"])
        trained = np.asarray(train["n_trained"])
        bins = pack(lengths.tolist(), args.max_seq_length)
        padded = padded_tokens(lengths, args.batch_size)
        packed = len(bins) * args.max_seq_length

    result = {
        "rows": args.rows,
        "rows_kept": dm.summary.rows_kept,
        "dropped": dm.summary.dropped,
        "chars_mean": float(np.mean([sum(len(v) for v in r.values()) for r in rows])),
        "tokens_mean": float(lengths.mean()),
        "tokens_p99": float(np.percentile(lengths, 99)),
        "tokenizer": tokenizer_name,
        "num_proc": args.num_proc,
        "cold_s": timings["cold"],
        "cached_s": timings["cached"],
        "fill_padded": float(lengths.sum() / padded),
        "fill_packed": float(lengths.sum() / packed),
        "trained_share_padded": float(trained.sum() / padded),
        "trained_share_packed": float(trained.sum() / packed),
        "packed_sequences": len(bins),
        "max_seq_length": args.max_seq_length,
        "batch_size": args.batch_size,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    print(f"\n{'measure':<44}{'value':>12}{'target':>12}")
    for label, value, target in [
        (f"cold: validate+format+tokenize {args.rows} rows (s)", f"{result['cold_s']:.1f}", "< 60"),
        ("cached: second start (s)", f"{result['cached_s']:.2f}", "< 5"),
        (f"sequence fill, padded (batch {args.batch_size})", f"{result['fill_padded']:.1%}", ""),
        (f"sequence fill, packed ({args.max_seq_length})", f"{result['fill_packed']:.1%}", ">= 95%"),
        (f"trained-token share, padded (batch {args.batch_size})", f"{result['trained_share_padded']:.1%}", ""),
        (f"trained-token share, packed ({args.max_seq_length})", f"{result['trained_share_packed']:.1%}", ""),
        ("tokens per row (mean / p99)", f"{result['tokens_mean']:.0f} / {result['tokens_p99']:.0f}", ""),
    ]:
        print(f"{label:<44}{value:>12}{target:>12}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
