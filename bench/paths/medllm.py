"""(a, b) medllm's own path: the project's train.py with the Unsloth backend, read from its summary.json.

The rows go through medllm's whole pipeline (a local file, validation, the R1 chat format, tokenization,
packing), so they are written as text: random token ids of the checkpoint's tokenizer, decoded, with
lengths fitted to the harness's (fixed: ``seq`` tokens, all trained; medical: N(800, 250) tokens with
the first 30% as the question, masked). medllm measures its own tokens/s after the same warm-up steps.
"""

from __future__ import annotations

import functools
import json
import random
import shlex
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import harness
from medllm.data.records import CONTROL_CHARACTERS

MEDICAL_PACKED_BATCH = 3  # packed sequences of `seq` tokens per step: ~6,100 tokens, like TRL's 8 rows


def _text_of_length(tokenizer, rng: random.Random, n: int) -> str:
    """Text that the tokenizer encodes to about ``n`` tokens (decode-encode can merge a few)."""
    low = len(tokenizer.all_special_ids) + 1
    # Tokens that decode to text: a control character (a byte-level token's) makes a row bad to the data checks.
    text_ids = _text_ids(tokenizer, low)
    ids: list[int] = []
    for _ in range(8):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        missing = n - len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if abs(missing) <= 2:
            break
        ids = ids + [rng.choice(text_ids) for _ in range(missing)] if missing > 0 else ids[:missing]
    return tokenizer.decode(ids, skip_special_tokens=True)


@functools.cache
def _text_ids(tokenizer, low: int) -> list[int]:
    return [i for i in range(low, len(tokenizer)) if not CONTROL_CHARACTERS.search(tokenizer.decode([i]))]


def write_rows(settings: harness.Settings, path: Path, gpus: int = 1) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(settings.checkpoint)
    rng = random.Random(settings.seed)
    count = settings.batch * settings.total_steps * gpus + 8  # a few more for the validation split
    if settings.mode == "fixed":
        lengths = [settings.seq + 64] * count  # truncated to exactly `seq` by data.too_long=truncate
    else:
        lengths = harness.medical_lengths(count * 2, settings.seed)  # packing: more rows per step
    with path.open("w") as f:
        for length in lengths:
            prompt = round(length * harness.MEDICAL_PROMPT_FRACTION)
            row = {
                "Question": _text_of_length(tokenizer, rng, prompt),
                "Complex_CoT": _text_of_length(tokenizer, rng, length - prompt),
                "Response": "Done.",
            }
            f.write(json.dumps(row) + "\n")


def train_overrides(
    settings: harness.Settings, workdir: Path, checkpointing: str, gpus: int | None = None
) -> list[str]:
    """train.py's Hydra overrides for this benchmark, after writing its rows into ``workdir``; with ``gpus``,
    ``hardware=ddp`` and rows for that many processes."""
    rows = workdir / "rows.jsonl"
    write_rows(settings, rows, gpus or 1)
    if settings.mode == "fixed":
        # Rows of exactly `seq` tokens in a [batch, seq] batch, as the other paths train them. Not packed
        # (experiment=qlora_r16 packs): packing would put the batch's rows end to end in one [1, batch x seq]
        # sequence with restarting positions, a different attention layout.
        data = [
            f"data.batch_size={settings.batch}",
            "data.packing=false",
            "data.train_on=all",
            "data.too_long=truncate",
        ]
    else:
        data = [f"data.batch_size={MEDICAL_PACKED_BATCH}", "data.packing=true", "data.too_long=drop"]
    return [
        "experiment=qlora_r16",
        *(["hardware=ddp"] if gpus is not None else []),
        f"model.name_or_path={settings.checkpoint}",
        f"model.gradient_checkpointing={checkpointing}",
        f"max_seq_length={settings.seq}",
        "data=local",
        f"data.path={rows}",
        "data.val_size=2",
        "data.phi_check=off",
        "data.num_proc=1",
        f"data.cache_dir={workdir / 'cache'}",
        *data,
        "logger=csv",
        f"trainer.max_steps={settings.total_steps}",
        "trainer.max_epochs=-1",
        "trainer.accumulate_grad_batches=1",
        "trainer.limit_val_batches=0",
        f"throughput_warmup_steps={settings.warmup}",
        "scheduler.num_warmup_steps=0",
        f"seed={settings.seed}",
        f"hydra.run.dir={workdir / 'run'}",
    ]


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(
    settings: harness.Settings,
    workdir: Path,
    checkpointing: str,
    gpus: int | None = None,
    as_nodes: bool = False,
    extra: Sequence[str] = (),
    threads: int | None = None,
) -> list[str]:
    """train.py's command: one process on one GPU; with ``gpus``, DDP on that many (one too: DDP's own cost)
    under torchrun with ``hardware=ddp``, ``settings.batch`` rows per GPU.

    ``extra``: Hydra overrides added last. ``as_nodes``: each GPU is a node of its own, as on a cluster of
    one-GPU machines: one torchrun per GPU with ``--nnodes gpus --nproc_per_node 1``, meeting on localhost,
    each seeing only its GPU. ``threads``: each process's ``OMP_NUM_THREADS``, which torchrun otherwise sets
    to 1 when it starts several processes on a node (and leaves to Lightning, which gives each its share of the
    CPUs, when it starts one).
    """
    train = ["train.py", *train_overrides(settings, workdir, checkpointing, gpus), *extra]
    if gpus is None:
        return [sys.executable, *train]
    run = [sys.executable, "-m", "torch.distributed.run"]
    if threads is not None:
        run = ["env", f"OMP_NUM_THREADS={threads}", *run]
    if not as_nodes:
        return [*run, f"--nproc_per_node={gpus}", *train]
    port = free_port()
    nodes = [
        f"CUDA_VISIBLE_DEVICES={rank} "
        + shlex.join(
            [
                *run,
                f"--nnodes={gpus}",
                "--nproc_per_node=1",
                f"--node_rank={rank}",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                *train,
            ]
        )
        + " & pids+=($!)"
        for rank in range(gpus)
    ]
    return ["bash", "-c", "\n".join(["pids=()", *nodes, 'for p in "${pids[@]}"; do wait "$p" || exit 1; done'])]


def read_summary(lines: list[str], workdir: Path) -> dict[str, Any] | None:
    path = workdir / "run" / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    checkpointing = summary["gradient_checkpointing"]
    return {
        "card": harness.device_name(),
        "tokens_per_s": summary["tokens_per_s"],
        "label_tokens_per_s": summary["trained_tokens_per_s"],
        "peak_gib": summary["peak_mem_gib"],
        "steps": summary["steps"],
        "tokens": summary.get("timed_tokens"),
        "gradient_checkpointing": checkpointing,
        # train.py's estimate of its peak (what gradient_checkpointing=auto decided by), beside peak_gib
        "estimate_gib": checkpointing.get("estimate_gib"),
        "gpus": summary.get("world_size", 1),
        "last_loss": summary["train_loss_last"],
    }
