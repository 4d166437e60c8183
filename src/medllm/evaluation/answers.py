"""One model's answers to every item not yet answered, each recorded as it finishes, cut-off reasoning made to answer.

A completion that reaches ``max_new_tokens`` inside ``<think>`` names no answer. To see what the reasoning had
reached, it is continued as if it had stopped there: its tokens up to a budget, then ``</think>`` (the control
token, as the model writes it) and "The answer is", and a few greedy tokens more (``FORCED_TOKENS``). The same is
done at each thinking budget (``budgets``) for every completion whose reasoning ran past it, from the one long
generation: the answers at 512 tokens are those the model gives when cut at 512.

The merged engine runs both passes through one decoder (its cache holds a prompt, ``max_new_tokens`` and the few
forced tokens); each item's prediction is written when its answer (and any forced ones) are known. The peft engine
generates with transformers in chunks, each chunk's items written when it ends; it forces no answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medllm.data.chat_format import THINK_CLOSE, plain_text_encoder
from medllm.generation.decoding import Decoder, Sampling
from medllm.generation.hf_generate import decode_completion, generate, special_ids
from medllm.tasks.extraction import extract_answer
from medllm.tasks.items import BenchmarkItem
from medllm.tasks.scoring import majority_vote

FORCED_TEXT = "\n\nThe answer is"
FORCED_TOKENS = 8
PEFT_CHUNK_BATCHES = 4  # batches of the peft engine per chunk written


@dataclass(frozen=True)
class Question:
    """One item to answer, as asked: its benchmark, the item, the prompt's text and token ids."""

    benchmark: str
    item: BenchmarkItem
    prompt: str
    prompt_ids: list[int]


@dataclass
class Pass:
    """One generation pass's speed: what the report's speed table shows."""

    model: str
    kind: str  # "answers" or "forced answers"
    seconds: float
    rows: int
    new_tokens: int
    batch_size: int
    prompt_tokens: int = 0

    def as_row(self) -> dict[str, Any]:
        seconds = max(self.seconds, 1e-9)
        return {
            "model": self.model,
            "pass": self.kind,
            "seconds": self.seconds,
            "rows": self.rows,
            "new_tokens": self.new_tokens,
            "new_tokens_per_s": self.new_tokens / seconds,
            "rows_per_s": self.rows / seconds,
            "batch_size": self.batch_size,
        }


class Forcing:
    """Where each completion is made to answer, and the token ids that do it."""

    def __init__(self, tokenizer: Any, max_new_tokens: int, budgets: list[int], at_limit: bool) -> None:
        encoder = plain_text_encoder(tokenizer)
        (self.think_close,) = encoder.markers([THINK_CLOSE])
        (text,) = encoder.encode([FORCED_TEXT])
        self.suffix = [*self.think_close, *text]
        self.points = sorted(set(budgets) | ({max_new_tokens} if at_limit else set()))
        self.extra_tokens = len(self.suffix) + FORCED_TOKENS if self.points else 0

    def closes_at(self, ids: list[int]) -> int | None:
        """The number of tokens up to and including the first ``</think>``; None where the reasoning never closes."""
        width = len(self.think_close)
        return next((i + width for i in range(len(ids) - width + 1) if ids[i : i + width] == self.think_close), None)

    def reasoning_tokens(self, ids: list[int]) -> int:
        """The generated tokens before the first ``</think>`` (all of them where the reasoning never closes)."""
        closed = self.closes_at(ids)
        return len(ids) if closed is None else closed - len(self.think_close)

    def budgets_for(self, ids: list[int]) -> list[int]:
        """The budgets at which ``ids`` is made to answer: those it reached with its reasoning still open."""
        closed = self.closes_at(ids)
        return [b for b in self.points if len(ids) >= b and (closed is None or closed > b)]


def _row(
    question: Question, model: str, outputs: list[str], ids: list[int], max_new_tokens: int, forcing: Forcing
) -> dict[str, Any]:
    """A prediction row; ``ids``: the first completion's tokens (its length, its reasoning's length)."""
    item = question.item
    votes = [extract_answer(out, item) for out in outputs]
    parsed = votes[0] if len(votes) == 1 else majority_vote(votes)
    new_tokens = len(ids)
    row = {
        "benchmark": question.benchmark,
        "model": model,
        "id": item.id,
        "prompt": question.prompt,
        "output": outputs[0],
        "parsed": parsed,
        "gold": item.gold,
        "correct": parsed == item.gold,
        "new_tokens": new_tokens,
        "cut_off": new_tokens >= max_new_tokens,
        "reasoning_tokens": forcing.reasoning_tokens(ids),
    }
    if len(outputs) > 1:
        row |= {"samples": outputs, "votes": votes}
    return row


def answer_merged(
    decoder: Decoder,
    tokenizer: Any,
    model: str,
    questions: list[Question],
    settings: dict[str, Any],
    forcing: Forcing,
    record: Callable[[dict[str, Any]], None],
) -> list[Pass]:
    """Every question's answer through the merged engine's decoder, each ``record``-ed as soon as it is known."""
    eos, pad = special_ids(tokenizer)
    samples, limit = settings["num_samples"], settings["max_new_tokens"]
    sampling = Sampling(settings["do_sample"], settings["temperature"], settings["top_p"])
    finished: dict[int, dict[int, list[int]]] = {}
    waiting: dict[int, tuple[dict[str, Any], list[int], list[int]]] = {}  # forced answers still to decode

    def on_finish(index: int, ids: list[int]) -> None:
        number, sample = divmod(index, samples)
        finished.setdefault(number, {})[sample] = ids
        if len(finished[number]) < samples:
            return
        rows_ids = [finished.pop(number)[s] for s in range(samples)]
        outputs = [decode_completion(tokenizer, ids, pad) for ids in rows_ids]  # as the peft engine writes them
        row = _row(questions[number], model, outputs, rows_ids[0], limit, forcing)
        points = forcing.budgets_for(rows_ids[0])
        if points:
            waiting[number] = (row, rows_ids[0], points)
        else:
            record(row)

    prompts = [q.prompt_ids for q in questions for _ in range(samples)]
    started = time.perf_counter()
    ids = decoder.decode(
        prompts, eos_id=eos, pad_id=pad, sampling=sampling, seed=settings["seed"], row_budgets=[limit] * len(prompts),
        on_finish=on_finish,
    )  # fmt: skip
    passes = [
        Pass(model, "answers", time.perf_counter() - started, len(prompts), sum(map(len, ids)), decoder.batch_size,
             sum(map(len, prompts)))
    ]  # fmt: skip
    if waiting:

        def short(forced: list[list[int]]) -> list[list[int]]:
            budgets = [FORCED_TOKENS] * len(forced)
            return decoder.decode(forced, eos_id=eos, pad_id=pad, row_budgets=budgets, progress=False)

        passes.append(_force(short, tokenizer, model, questions, waiting, forcing, decoder.batch_size, record))
    return passes


def _force(short, tokenizer, model, questions, waiting, forcing: Forcing, batch_size: int, record) -> Pass:
    """Decode the forced answers of ``waiting`` (greedy, through ``short``), add them to their rows, record the rows."""
    jobs = [(number, b) for number, (_, _, points) in waiting.items() for b in points]
    prompts = [questions[n].prompt_ids + waiting[n][1][:b] + forcing.suffix for n, b in jobs]
    started = time.perf_counter()
    out = short(prompts)
    elapsed = time.perf_counter() - started
    for (number, budget), answer_ids in zip(jobs, out, strict=True):
        row, ids, _ = waiting[number]
        text = tokenizer.decode(ids[:budget] + forcing.suffix + answer_ids, skip_special_tokens=False)
        row.setdefault("forced", {})[str(budget)] = extract_answer(text, questions[number].item)
    for number in sorted(waiting):
        record(waiting[number][0])
    return Pass(model, "forced answers", elapsed, len(prompts), sum(map(len, out)), batch_size,
                sum(map(len, prompts)))  # fmt: skip


def answer_peft(
    model_obj: Any,
    tokenizer: Any,
    model: str,
    questions: list[Question],
    settings: dict[str, Any],
    forcing: Forcing,
    batch_size: int,
    record: Callable[[dict[str, Any]], None],
) -> list[Pass]:
    """Every question's answer through transformers' generate, a chunk at a time, each chunk recorded as it ends."""
    chunk, limit = batch_size * PEFT_CHUNK_BATCHES, settings["max_new_tokens"]
    passes = [Pass(model, "answers", 0.0, 0, 0, batch_size), Pass(model, "forced answers", 0.0, 0, 0, batch_size)]

    def short(forced: list[list[int]]) -> list[list[int]]:
        _, ids = generate(model_obj, tokenizer, forced, FORCED_TOKENS, batch_size, progress=False, with_ids=True)
        return [row[0] for row in ids]

    for first in range(0, len(questions), chunk):
        part = questions[first : first + chunk]
        started = time.perf_counter()
        texts, ids = generate(
            model_obj,
            tokenizer,
            [q.prompt_ids for q in part],
            max_new_tokens=limit,
            batch_size=batch_size,
            do_sample=settings["do_sample"],
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            num_samples=settings["num_samples"],
            seed=settings["seed"] + first,
            with_ids=True,
        )
        done = passes[0]
        done.seconds += time.perf_counter() - started
        done.rows += len(part) * settings["num_samples"]
        done.new_tokens += sum(len(i) for row in ids for i in row)
        done.prompt_tokens += sum(len(q.prompt_ids) for q in part)
        waiting = {}
        for number, (outputs, row_ids) in enumerate(zip(texts, ids, strict=True)):
            row = _row(part[number], model, outputs, row_ids[0], limit, forcing)
            points = forcing.budgets_for(row_ids[0])
            if points:
                waiting[number] = (row, row_ids[0], points)
            else:
                record(row)
        if waiting:
            forced = _force(short, tokenizer, model, part, waiting, forcing, batch_size, record)
            for key in ("seconds", "rows", "new_tokens", "prompt_tokens"):
                setattr(passes[1], key, getattr(passes[1], key) + getattr(forced, key))
    return [p for p in passes if p.rows]
