"""One evaluation run, from a composed ``eval.yaml`` config to a report (or streamed answers).

The base model is loaded once and every adapter scored on it, so a sweep of adapters costs one base
load, not one per adapter (``medllm.generation.engines``: the merged engine merges each adapter into
the 16-bit weights in turn and decodes with the slot-refill decoder; the peft engine loads each adapter
beside the active one and scores the base with the adapter switched off). Every model answers the same
prompts with the same decoding settings; only the adapter differs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from medllm.config.checks import check_eval_config
from medllm.config.inputs import ADAPTER_CONFIG, find_adapters
from medllm.config.schema import scores_held_out
from medllm.data.chat_format import R1ChatFormat
from medllm.errors import ConfigError
from medllm.evaluation.held_out import held_out_metrics, val_datamodule
from medllm.evaluation.report import write_report
from medllm.evaluation.results import BASE, EvalResult, TrainingRun, adapter_label
from medllm.evaluation.run_settings import check_prompt, run_records
from medllm.generation.decoding import Decoder, Sampling
from medllm.generation.engines import (
    decode_completions,
    each_peft_model,
    peft_model_cfg,
    resolve_engine,
    to_accelerator,
)
from medllm.generation.hf_generate import generate, stream_answer
from medllm.generation.merged import each_merged_model
from medllm.models.backends import get_backend
from medllm.runs.jobs import read_job
from medllm.runs.layout import ANSWERS, RunDir, check_eval_dir
from medllm.runs.record import RunRecord
from medllm.tasks.benchmarks import load_items
from medllm.tasks.scoring import score_completions

log = logging.getLogger(__name__)


def check_adapter_base(path: str, model_cfg: DictConfig) -> None:
    """An adapter of the tiny model can't load onto a real one, nor the reverse: say which model to pass.

    The tiny model's adapters record no base (``base_model_name_or_path`` null); real ones record it.
    """
    trained_on = json.loads((Path(path).expanduser() / ADAPTER_CONFIG).read_text("utf-8")).get(
        "base_model_name_or_path"
    )
    evaluating = model_cfg.get("name_or_path")
    if trained_on is None and evaluating is not None:
        raise ConfigError(f"{path} was trained on the tiny model; evaluate it with model=tiny_llama")
    if trained_on is not None and evaluating is None:
        raise ConfigError(
            f"{path} was trained on {trained_on}; pass the model it was trained with "
            "(e.g. model=r1_distill_llama_8b hardware=gpu), not the tiny one"
        )
    if trained_on is not None and not _same_model(trained_on, str(evaluating)) and RunRecord.read(path) is None:
        # With a record, take_run_settings has matched the base already; without one, PEFT's note is all there
        # is. Not refused: a 4-bit or renamed copy of the same base is named differently.
        log.warning(
            "%s names %s as its base in %s, and this evaluation loads %s: if that is another model, its scores "
            "measure the adapter on a base it was not trained on",
            path,
            trained_on,
            ADAPTER_CONFIG,
            evaluating,
        )


def _same_model(a: str, b: str) -> bool:
    """Two model names or paths that name one model (local paths compared resolved)."""
    if a == b:
        return True
    paths = [Path(x).expanduser() for x in (a, b)]
    return all(p.exists() for p in paths) and paths[0].resolve() == paths[1].resolve()


def training_run(adapter_path: str) -> TrainingRun | None:
    """What trained an adapter saved by train.py (``<run>/adapter``). An adapter put beside another run's
    (``<run>/adapter_copy``) is credited with that run only where its record is the run's own adapter's."""
    adapter = Path(adapter_path).expanduser()
    run = RunDir(adapter.parent)
    if not run.summary_file.is_file():
        return None
    if adapter.resolve() != run.adapter.resolve():
        record = RunRecord.read(adapter)
        if record is None or record != RunRecord.read(run.adapter):
            return None
    job = read_job(run.path)
    return TrainingRun(run_dir=str(run.path), val_loss=job.val_loss, lr=job.lr, r=job.r, alpha=job.alpha)


def _label(adapter: str | None) -> str:
    return BASE if adapter is None else adapter_label(adapter)


def evaluate(cfg: DictConfig) -> list[EvalResult]:
    """Score every model on ``cfg.benchmark``, write the report into ``cfg.paths.output_dir``; returns the results."""
    check_eval_config(cfg)
    check_eval_dir(Path(cfg.paths.output_dir))
    L.seed_everything(cfg.seed, verbose=False)
    adapters = find_adapters(cfg.get("adapter_path"), cfg.get("adapters"), cfg.get("sweep_dir"))
    for path in adapters:
        check_adapter_base(path, cfg.model)
    records = run_records(adapters)
    tokenizer = get_backend(cfg.model.backend).load_tokenizer(cfg.model)
    if cfg.mode == "generate":
        answer_question(cfg, tokenizer, adapters)
        return []
    name, held_out = cfg.benchmark.name, scores_held_out(cfg)
    if held_out:  # data and items come first: a bad file stops the run before any model loads
        datamodule = val_datamodule(cfg, tokenizer, records)
    else:
        items = load_items(cfg)
        fmt = R1ChatFormat(instruction=cfg.benchmark.get("instruction"))
        check_prompt(fmt, records)
        prompts = [fmt.generation_prompt(item.prompt_text()) for item in items]
        prompt_ids = fmt.encode_generation_prompts(tokenizer, [item.prompt_text() for item in items])
    engine = resolve_engine(cfg)
    log.info("engine: %s", engine)
    if engine == "merged":
        models = each_merged_model(cfg.model, tokenizer, adapters, cfg.include_base, cfg.trainer.accelerator)
    else:
        model_cfg = peft_model_cfg(cfg.model)
        models = each_peft_model(model_cfg, tokenizer, adapters, cfg.include_base, cfg.seed)
    results, decoder = [], None
    sampling = Sampling(cfg.do_sample, cfg.temperature, cfg.top_p)
    for adapter, model in models:
        label, run = _label(adapter), training_run(adapter) if adapter else None
        log.info("%s: %s", name, label)
        if held_out:
            results.append(EvalResult(name, label, held_out_metrics(model, datamodule, cfg), run=run))
            continue
        if engine == "merged":
            rows = len(prompt_ids) * cfg.num_samples
            batch_size = None if cfg.batch_size == "auto" else min(cfg.batch_size, rows)  # no slot left idle
            decoder = decoder or Decoder(
                model, max(map(len, prompt_ids)), cfg.max_new_tokens, batch_size, rows, attention=cfg.decode_attention
            )
            completions = decode_completions(decoder, tokenizer, prompt_ids, sampling, cfg.num_samples, cfg.seed)
        else:
            model = to_accelerator(model, cfg.trainer.accelerator)
            get_backend(model_cfg.backend).for_inference(model)
            completions = generate(
                model,
                tokenizer,
                prompt_ids,
                max_new_tokens=cfg.max_new_tokens,
                batch_size=8 if cfg.batch_size == "auto" else cfg.batch_size,
                do_sample=cfg.do_sample,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                num_samples=cfg.num_samples,
                seed=cfg.seed,
            )
        metrics, predictions = score_completions(items, prompts, completions, tokenizer)
        results.append(EvalResult(name, label, metrics, predictions, run))
    paths = write_report(cfg.paths.output_dir, results)
    log.info("\n%s", paths["report.md"].read_text("utf-8"))
    log.info("report: %s", ", ".join(str(p) for p in paths.values()))
    return results


def answer_question(cfg: DictConfig, tokenizer: Any, adapters: list[str]) -> list[dict[str, str]]:
    """Stream each model's answer to ``cfg.question`` to the terminal; also saved as answers.jsonl."""
    question = str(cfg.question).strip()
    instruction = cfg.benchmark.get("instruction", cfg.data.get("instruction"))
    fmt = R1ChatFormat(instruction=instruction)
    check_prompt(fmt, run_records(adapters))
    (prompt,) = fmt.encode_generation_prompts(tokenizer, [question])
    answers = []
    model_cfg = peft_model_cfg(cfg.model)
    for adapter, model in each_peft_model(model_cfg, tokenizer, adapters, cfg.include_base, cfg.seed):
        model = to_accelerator(model, cfg.trainer.accelerator)
        get_backend(model_cfg.backend).for_inference(model)
        label = _label(adapter)
        print(f"\n===== {label} =====", flush=True)
        text = stream_answer(model, tokenizer, prompt, max_new_tokens=cfg.max_new_tokens)
        print(flush=True)
        answers.append({"model": label, "question": question, "output": text})
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / ANSWERS).open("w", encoding="utf-8") as f:
        for row in answers:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return answers
