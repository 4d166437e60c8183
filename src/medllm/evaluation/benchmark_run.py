"""Every model's answers to a benchmark or a suite of them, recorded item by item, then scored into one report.

The items of every benchmark are read (and checked) before any model loads. Each model answers every item not
already in predictions.jsonl (all of them, unless ``resume=true`` kept some), the benchmarks of a suite decoded
together so that the slots of the merged engine's decoder stay full across them. The report is computed from
predictions.jsonl alone: per benchmark and model the scores, the cut-off reasoning and the forced answers; the
suite's macro and micro averages; each adapter against the base (and in a sweep each adapter against the best)
with a paired bootstrap interval and McNemar's p; the accuracy at each thinking budget; the speed of each pass.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medllm.data.chat_format import R1ChatFormat
from medllm.evaluation.answers import Forcing, Question, answer_merged, answer_peft
from medllm.evaluation.predictions import PredictionLog
from medllm.evaluation.report import write_report
from medllm.evaluation.results import BASE, EvalResult, adapter_label
from medllm.evaluation.run_settings import check_prompt
from medllm.evaluation.scores import (
    ALL,
    averages,
    benchmark_result,
    best_of,
    budget_curve,
    comparisons,
    item_correct,
)
from medllm.evaluation.speed import bandwidth_share
from medllm.evaluation.wandb_report import log_report
from medllm.generation.decoding import Decoder
from medllm.generation.engines import each_peft_model, peft_model_cfg, resolve_engine, to_accelerator
from medllm.generation.merged import each_merged_model
from medllm.models.backends import get_backend
from medllm.runs.record import RunRecord
from medllm.tasks.benchmarks import load_items
from medllm.tasks.items import BenchmarkItem
from medllm.tasks.protocols import STRICT, as_protocol_item, prompt_text
from medllm.tasks.suites import load_suite

log = logging.getLogger(__name__)


def load_benchmarks(cfg: DictConfig) -> tuple[dict[str, list[BenchmarkItem]], dict[str, str]]:
    """The items to score, by benchmark (a suite's, or ``cfg.benchmark``'s), and the suite's skipped benchmarks."""
    suite = cfg.get("suite")
    if suite is None:
        return {cfg.benchmark.name: load_items(cfg)}, {}
    return load_suite(list(suite.benchmarks), suite.get("data_dir"), cfg.limit, cfg.limit_seed)


def _questions(cfg: DictConfig, tokenizer: Any, benchmarks: dict[str, list[BenchmarkItem]], records) -> list[Question]:
    protocol = cfg.protocol.name
    instruction = (cfg.suite if cfg.get("suite") is not None else cfg.benchmark).get("instruction")
    fmt = R1ChatFormat(instruction=instruction if protocol == STRICT else None)
    if protocol == STRICT:  # another protocol asks in its own words on purpose
        check_prompt(fmt, records)
    questions = []
    for name, items in benchmarks.items():
        texts = [prompt_text(item, protocol) for item in items]
        ids = fmt.encode_generation_prompts(tokenizer, texts)
        questions += [Question(name, item, fmt.generation_prompt(t), i) for item, t, i in zip(items, texts, ids)]
    return questions


def _settings(cfg: DictConfig, models: list[str], benchmarks: dict[str, list[BenchmarkItem]]) -> dict[str, Any]:
    """What the predictions depend on: a resume must match it (``medllm.evaluation.predictions``)."""
    keys = ("max_new_tokens", "do_sample", "temperature", "top_p", "num_samples", "seed", "force_answers")
    return {
        "models": models,
        "items": {name: [item.id for item in items] for name, items in benchmarks.items()},
        "protocol": cfg.protocol.name,
        "budgets": sorted(cfg.budgets),
        "model": str(cfg.model.get("name_or_path") or cfg.model.backend),
        **{key: cfg[key] for key in keys},
    }


def run_benchmarks(
    cfg: DictConfig, tokenizer: Any, adapters: list[str], records: dict[str, RunRecord], runs: dict[str, Any]
) -> list[EvalResult]:
    """Score the base (unless left out) and each adapter; ``runs`` maps adapter paths to their TrainingRun (or None).
    Writes the report into ``cfg.paths.output_dir`` and returns a result per (benchmark, model)."""
    benchmarks, skipped = load_benchmarks(cfg)
    benchmarks = {name: [as_protocol_item(i, cfg.protocol.name) for i in items] for name, items in benchmarks.items()}
    questions = _questions(cfg, tokenizer, benchmarks, records)
    labels = {None: BASE} | {path: adapter_label(path) for path in adapters}
    if adapters and not cfg.include_base:
        labels.pop(None)
    out = Path(cfg.paths.output_dir)
    settings = _settings(cfg, list(labels.values()), benchmarks)
    predictions = PredictionLog(out, settings, bool(cfg.get("resume")))
    forcing = Forcing(tokenizer, cfg.max_new_tokens, list(cfg.budgets), cfg.force_answers)
    engine = resolve_engine(cfg)
    log.info("engine: %s; protocol: %s; %d items in %d benchmark(s)", engine, cfg.protocol.name, len(questions),
             len(benchmarks))  # fmt: skip
    if engine == "merged":
        models = each_merged_model(cfg.model, tokenizer, adapters, cfg.include_base, cfg.trainer.accelerator)
    else:
        model_cfg = peft_model_cfg(cfg.model)
        models = each_peft_model(model_cfg, tokenizer, adapters, cfg.include_base, cfg.seed)
    speed, decoder = [], None
    try:
        for adapter, model in models:
            label = labels[adapter]
            pending = [q for q in questions if not predictions.done(q.benchmark, label, q.item.id)]
            log.info("%s: %d item(s) to answer", label, len(pending))
            if not pending:
                continue
            if engine == "merged":
                rows = len(questions) * cfg.num_samples
                batch_size = None if cfg.batch_size == "auto" else min(cfg.batch_size, rows)
                decoder = decoder or Decoder(
                    model, max(len(q.prompt_ids) for q in questions), cfg.max_new_tokens + forcing.extra_tokens,
                    batch_size, rows, attention=cfg.decode_attention,
                )  # fmt: skip
                passes = answer_merged(decoder, tokenizer, label, pending, settings, forcing, predictions.append)
            else:
                model = to_accelerator(model, cfg.trainer.accelerator)
                get_backend(model_cfg.backend).for_inference(model)
                batch_size = 8 if cfg.batch_size == "auto" else cfg.batch_size
                passes = answer_peft(
                    model, tokenizer, label, pending, settings, forcing, batch_size, predictions.append
                )
            for done in passes:
                speed.append(done.as_row() | bandwidth_share(model, done.as_row(), done.prompt_tokens))
    finally:
        predictions.close()
    return _report(cfg, tokenizer, benchmarks, skipped, labels, predictions.rows, runs, speed, forcing)


def _report(cfg, tokenizer, benchmarks, skipped, labels, rows, runs, speed, forcing: Forcing) -> list[EvalResult]:
    protocol, results = cfg.protocol.name, []
    rows_by, correct = {}, {}
    for name, items in benchmarks.items():
        for adapter, label in labels.items():
            mine = [rows[(name, label, item.id)] for item in items]
            result = benchmark_result(name, label, mine, items, protocol, cfg.max_new_tokens)
            result.run = runs.get(adapter) if adapter else None
            results.append(result)
            rows_by[(name, label)] = mine
            by_id = {item.id: item for item in items}
            correct[(name, label)] = dict(zip(by_id, item_correct(mine, result.metrics, by_id, protocol), strict=True))
    models = list(labels.values())
    names = list(benchmarks)
    avg = averages(results, models) if cfg.get("suite") is not None else None
    pairs = {}
    for scope in [*names, ALL] if len(names) > 1 else names:
        in_scope = [r for r in results if scope == ALL or r.benchmark == scope]
        best = best_of(in_scope, avg) if scope == ALL else best_of(in_scope)
        pairs[scope] = [(m, BASE) for m in models if m != BASE and BASE in models]
        pairs[scope] += [(m, best) for m in models if best is not None and m not in (BASE, best)]
    extras = {
        "protocol": protocol,
        "averages": avg,
        "skipped": skipped,
        "comparisons": comparisons(correct, names, pairs, cfg.seed),
        "budgets": budget_curve(rows_by, sorted(cfg.budgets)) if cfg.budgets else {},
        "speed": speed,
    }
    extras = {k: v for k, v in extras.items() if v is not None}
    paths = write_report(cfg.paths.output_dir, results, extras)
    log.info("\n%s", paths["report.md"].read_text("utf-8"))
    log.info("report: %s", ", ".join(str(p) for p in paths.values()))
    log_report(cfg, results, extras, Path(cfg.paths.output_dir))
    return results
