"""What every benchmark path shares: its command line, the synthetic data, the LoRA recipe, the plain
training loop, the throughput meter and the result line the driver reads.

A path is a process that loads the model its own way, trains ``warmup + steps`` optimizer steps on the
batches made here and prints one ``BENCH_RESULT {json}`` line. Keeping data, LoRA settings, timing and
memory accounting in this one module is what makes the paths comparable.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

RESULT_PREFIX = "BENCH_RESULT "
IGNORE_INDEX = -100

# QLoRA recipe shared by every path.
LORA_RANK = 16
LORA_ALPHA = 16
LORA_DROPOUT = 0.0
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LEARNING_RATE = 2e-4

# Medical-o1-like rows: lengths ~ N(800, 250) clipped to 200..1,400 tokens, the first 30% a masked prompt.
MEDICAL_LENGTH_MEAN = 800
MEDICAL_LENGTH_STD = 250
MEDICAL_LENGTH_RANGE = (200, 1400)
MEDICAL_PROMPT_FRACTION = 0.3
DEFAULT_BATCH = {"fixed": 4, "medical": 8}

# Random token ids are drawn from this range: inside the 128,256-row embedding of the benchmark model
# and clear of the Llama-3 special tokens (128000+). Pad positions use PAD_ID and are always masked.
TOKEN_ID_RANGE = (1000, 128000)
PAD_ID = 0


@dataclass(frozen=True)
class Settings:
    checkpoint: str
    mode: str
    batch: int
    seq: int
    steps: int
    warmup: int
    seed: int

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments that the driver passes on to every path unchanged."""
    parser.add_argument("--checkpoint", required=True, help="model dir written by bench/make_checkpoint.py")
    parser.add_argument("--mode", choices=("fixed", "medical"), default="fixed")
    parser.add_argument("--batch", type=int, default=None, help="rows per step (default: 4 fixed, 8 medical)")
    parser.add_argument("--seq", type=int, default=2048, help="row length in fixed mode; max_seq_length in both")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--seed", type=int, default=0)


def settings_from_args(args: argparse.Namespace) -> Settings:
    batch = args.batch if args.batch is not None else DEFAULT_BATCH[args.mode]
    return Settings(args.checkpoint, args.mode, batch, args.seq, args.steps, args.warmup, args.seed)


def settings_to_argv(settings: Settings) -> list[str]:
    return [f"--{name}={value}" for name, value in asdict(settings).items()]


def parse_path_args(description: str, extra: dict[str, dict[str, Any]] | None = None) -> argparse.Namespace:
    """Command line of a path module: the shared settings plus the path's own flags."""
    parser = argparse.ArgumentParser(description=description)
    add_settings_arguments(parser)
    for flag, options in (extra or {}).items():
        parser.add_argument(flag, **options)
    return parser.parse_args()


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Row:
    input_ids: list[int]
    labels: list[int]


def fixed_rows(settings: Settings) -> list[Row]:
    """``batch x total_steps`` rows of ``seq`` random tokens, every token trained."""
    rng = random.Random(settings.seed)
    rows = []
    for _ in range(settings.batch * settings.total_steps):
        ids = [rng.randrange(*TOKEN_ID_RANGE) for _ in range(settings.seq)]
        rows.append(Row(ids, list(ids)))
    return rows


def medical_lengths(count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    low, high = MEDICAL_LENGTH_RANGE
    return [min(high, max(low, round(rng.gauss(MEDICAL_LENGTH_MEAN, MEDICAL_LENGTH_STD)))) for _ in range(count)]


def medical_rows_of(lengths: list[int], seed: int) -> list[Row]:
    """Rows of these lengths whose first 30% is a prompt masked out of the loss."""
    rng = random.Random(seed + 1)
    rows = []
    for length in lengths:
        ids = [rng.randrange(*TOKEN_ID_RANGE) for _ in range(length)]
        prompt = round(length * MEDICAL_PROMPT_FRACTION)
        rows.append(Row(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return rows


def medical_rows(settings: Settings) -> list[Row]:
    """Rows of medical-o1-like lengths (see ``medical_lengths``)."""
    return medical_rows_of(medical_lengths(settings.batch * settings.total_steps, settings.seed), settings.seed)


def make_rows(settings: Settings) -> list[Row]:
    return fixed_rows(settings) if settings.mode == "fixed" else medical_rows(settings)


def pad_batch(rows: list[Row]) -> dict[str, torch.Tensor]:
    """Right-pads rows to the longest; pads are masked by position (attention mask), never by id.

    Rows of one length get no attention mask, so fixed-mode batches take the models' unmasked causal path.
    """
    longest = max(len(row.input_ids) for row in rows)
    input_ids = torch.full((len(rows), longest), PAD_ID, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        attention_mask[i, :n] = 1
    batch = {"input_ids": input_ids, "labels": labels}
    if not bool(attention_mask.all()):
        batch["attention_mask"] = attention_mask
    return batch


def padded_batches(settings: Settings) -> list[dict[str, torch.Tensor]]:
    rows = make_rows(settings)
    return [pad_batch(rows[i : i + settings.batch]) for i in range(0, len(rows), settings.batch)]


def count_tokens(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(real tokens, trained tokens) of a model input: pads excluded (by the attention mask, or a packed
    batch's own ``num_tokens``), a label counts when it is predicted (labels are shifted by one inside the
    loss, so a row's first label never is)."""
    input_ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if "num_tokens" in batch:
        tokens = torch.tensor(batch["num_tokens"])
    elif mask is not None:
        tokens = mask.sum()
    else:
        tokens = torch.tensor(input_ids.numel(), device=input_ids.device)
    labels = batch["labels"]
    return tokens, (labels[..., 1:] != IGNORE_INDEX).sum()


# ---------------------------------------------------------------- measuring


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> tuple[float, float]:
    """(peak allocated, peak reserved) since the last reset, in GiB."""
    if not torch.cuda.is_available():
        return 0.0, 0.0
    return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


@dataclass
class ThroughputMeter:
    """Counts the tokens of every batch and times the optimizer steps after ``warmup``.

    ``count`` is called with each model input, ``step_end`` after each optimizer step; the device is
    synchronized at each step end so the host clock measures finished work.
    """

    warmup: int
    steps_done: int = 0
    _pending: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    _timed: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    _step_times: list[float] = field(default_factory=list)
    _last_end: float | None = None
    last_loss: float | None = None

    def count(self, batch: dict[str, torch.Tensor]) -> None:
        self._pending.append(count_tokens(batch))

    def _resolve(self) -> None:
        """Step times are final as measured."""

    def step_end(self, loss: torch.Tensor | float | None = None) -> None:
        synchronize()
        now = time.perf_counter()
        self.steps_done += 1
        if self.steps_done > self.warmup:
            self._step_times.append(now - self._last_end)
            self._timed.extend(self._pending)
        self._pending.clear()
        self._last_end = now
        if loss is not None:
            self.last_loss = float(loss)

    def summary(self) -> dict[str, Any]:
        self._resolve()
        if not self._step_times:
            raise RuntimeError(f"no timed steps: {self.steps_done} done, warmup {self.warmup}")
        seconds = sum(self._step_times)
        tokens = sum(int(t) for t, _ in self._timed)
        label_tokens = sum(int(n) for _, n in self._timed)
        return {
            "steps": len(self._step_times),
            "seconds": seconds,
            "step_s_median": statistics.median(self._step_times),
            "step_s_max": max(self._step_times),
            "step_s": [round(t, 4) for t in self._step_times],
            "tokens": tokens,
            "label_tokens": label_tokens,
            "tokens_per_s": tokens / seconds,
            "label_tokens_per_s": label_tokens / seconds,
        }


@dataclass
class AsyncThroughputMeter(ThroughputMeter):
    """A meter that never makes the host wait: each step end records a CUDA event, and the step times are
    read from the events' GPU clock in ``summary`` (on a CPU: the host clock). Use it to time code whose
    speed depends on the host running ahead of the GPU."""

    _events: list[Any] = field(default_factory=list)

    def step_end(self, loss: torch.Tensor | float | None = None) -> None:
        if loss is not None:
            self.last_loss = loss  # a tensor, read in summary
        if torch.cuda.is_available():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        else:
            event = time.perf_counter()
        self.steps_done += 1
        if self.steps_done > self.warmup:
            self._timed.extend(self._pending)
        self._pending.clear()
        if self.steps_done >= self.warmup:
            self._events.append(event)

    def _resolve(self) -> None:
        synchronize()
        if self.last_loss is not None:
            self.last_loss = float(self.last_loss)
        if len(self._events) < 2:
            return
        pairs = zip(self._events, self._events[1:])
        if torch.cuda.is_available():
            self._step_times = [start.elapsed_time(end) / 1000 for start, end in pairs]
        else:
            self._step_times = [end - start for start, end in pairs]


def emit_result(path: str, settings: Settings, meter: ThroughputMeter, **extra: Any) -> dict[str, Any]:
    """Prints the line the driver reads; peak memory is since the path's last ``reset_peak_memory``."""
    peak, peak_reserved = peak_memory_gib()
    result = {
        "path": path,
        "card": device_name(),
        **meter.summary(),
        "peak_gib": peak,
        "peak_reserved_gib": peak_reserved,
        "last_loss": meter.last_loss,
        "settings": asdict(settings),
        **extra,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return result


def parse_result_line(lines: list[str]) -> dict[str, Any] | None:
    for line in reversed(lines):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None


# ---------------------------------------------------------------- training


MODEL_INPUTS = ("input_ids", "labels", "attention_mask", "position_ids", "packed_seq_lengths")


def model_inputs(batch: dict, device: torch.device) -> dict:
    """The batch's model arguments, tensors moved to ``device`` (packed_seq_lengths stays on the CPU, where
    Unsloth wants it)."""
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) and k != "packed_seq_lengths" else v
        for k, v in batch.items()
        if k in MODEL_INPUTS
    }


def train_plain_loop(
    model: torch.nn.Module, batches: list[dict], warmup: int, meter: ThroughputMeter | None = None
) -> ThroughputMeter:
    """The reference loop: fused AdamW, bf16 autocast, labels passed so the model computes the loss."""
    device = next(p for p in model.parameters() if p.requires_grad).device
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE, fused=True)
    meter = meter or ThroughputMeter(warmup)
    model.train()
    for batch in batches:
        meter.count(batch)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            # No KV cache, as TRL and medllm train: with one, packed rows could attend across their boundaries.
            loss = model(**model_inputs(batch, device), use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter.step_end(loss.detach())
    return meter
