"""One evaluation run, from a composed ``eval.yaml`` config to a report (or streamed answers).

The base model is loaded once and every adapter scored on it, so a sweep of adapters costs one base
load, not one per adapter (``medllm.generation.engines``: the merged engine merges each adapter into
the 16-bit weights in turn and decodes with the slot-refill decoder; the peft engine loads each adapter
beside the active one and scores the base with the adapter switched off). Every model answers the same
prompts with the same decoding settings; only the adapter differs. Benchmarks of generated answers (one, or a suite)
are run by ``medllm.evaluation.benchmark_run``; held-out loss and ``mode=generate`` here.
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
from medllm.evaluation.benchmark_run import run_benchmarks
from medllm.evaluation.held_out import held_out_metrics, val_datamodule
from medllm.evaluation.report import write_report
from medllm.evaluation.results import BASE, EvalResult, TrainingRun, adapter_label
from medllm.evaluation.run_settings import check_prompt, run_records
from medllm.generation.engines import each_peft_model, peft_model_cfg, to_accelerator
from medllm.generation.hf_generate import stream_answer
from medllm.models.backends import get_backend
from medllm.runs.jobs import read_job
from medllm.runs.layout import ANSWERS, RunDir, check_eval_dir
from medllm.runs.library_logs import once_through_the_root
from medllm.runs.record import RunRecord

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
    """Score every model on ``cfg.benchmark`` (or the suite's benchmarks), write the report into
    ``cfg.paths.output_dir``; returns the results."""
    check_eval_config(cfg)
    check_eval_dir(Path(cfg.paths.output_dir), resume=bool(cfg.get("resume")))
    once_through_the_root()
    L.seed_everything(cfg.seed, verbose=False)
    adapters = find_adapters(cfg.get("adapter_path"), cfg.get("adapters"), cfg.get("sweep_dir"))
    for path in adapters:
        check_adapter_base(path, cfg.model)
    records = run_records(adapters)
    tokenizer = get_backend(cfg.model.backend).load_tokenizer(cfg.model)
    if cfg.mode == "generate":
        answer_question(cfg, tokenizer, adapters)
        return []
    if not scores_held_out(cfg):
        runs = {path: training_run(path) for path in adapters}
        return run_benchmarks(cfg, tokenizer, adapters, records, runs)
    name = cfg.benchmark.name
    datamodule = val_datamodule(cfg, tokenizer, records)  # a bad file stops the run before any model loads
    model_cfg = peft_model_cfg(cfg.model)
    results = []
    for adapter, model in each_peft_model(model_cfg, tokenizer, adapters, cfg.include_base, cfg.seed):
        label, run = _label(adapter), training_run(adapter) if adapter else None
        log.info("%s: %s", name, label)
        results.append(EvalResult(name, label, held_out_metrics(model, datamodule, cfg), run=run))
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
    log.info("answers saved to %s", out / ANSWERS)
    return answers
