"""One evaluation run, from a composed ``eval.yaml`` config to a report (or streamed answers).

The base model is loaded once and every adapter scored on it, so a sweep of adapters costs one base
load, not one per adapter. The merged engine (``evaluation.merged``, the default for benchmarks) merges
each adapter into the 16-bit weights in turn and decodes with ``evaluation.decoding``; the peft engine
loads each adapter beside the active one and scores the base with the adapter switched off
(``disable_adapter``). Every model answers the same prompts with the same decoding settings; only the
adapter differs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from medllm.config_checks import check_eval_config
from medllm.data.chat_format import R1ChatFormat
from medllm.evaluation.adapters import ADAPTER_CONFIG, EvalConfigError, find_adapters
from medllm.evaluation.benchmarks import BenchmarkItem, load_items, subsample
from medllm.evaluation.decoding import Decoder, Sampling, kv_bytes_per_token
from medllm.evaluation.eval_dir import ANSWERS
from medllm.evaluation.extraction import extract_answer
from medllm.evaluation.generation import generate, majority_vote, special_ids, stream_answer
from medllm.evaluation.merged import each_merged_model
from medllm.evaluation.metrics import reasoning_stats, score
from medllm.evaluation.report import BASE, adapter_label, write_report
from medllm.evaluation.run_settings import VAL_BENCHMARK, check_held_out, check_prompt, run_records
from medllm.models.backends import get_backend
from medllm.run_record import read_run_record
from medllm.training.sweep import read_job

log = logging.getLogger(__name__)

# The merged engine is chosen by `auto` where the 16-bit weights and this many rows of KV cache fit.
MIN_MERGED_ROWS = 8


# ---------------------------------------------------------------------------------------------- models


def check_adapter_base(path: str, model_cfg: DictConfig) -> None:
    """An adapter of the tiny model can't load onto a real one, nor the reverse: say which model to pass.

    The tiny model's adapters record no base (``base_model_name_or_path`` null); real ones record it.
    """
    trained_on = json.loads((Path(path).expanduser() / ADAPTER_CONFIG).read_text("utf-8")).get(
        "base_model_name_or_path"
    )
    evaluating = model_cfg.get("name_or_path")
    if trained_on is None and evaluating is not None:
        raise EvalConfigError(f"{path} was trained on the tiny model; evaluate it with model=tiny_llama")
    if trained_on is not None and evaluating is None:
        raise EvalConfigError(
            f"{path} was trained on {trained_on}; pass the model it was trained with "
            "(e.g. model=r1_distill_llama_8b hardware=gpu), not the tiny one"
        )
    if trained_on is not None and not _same_model(trained_on, str(evaluating)) and read_run_record(path) is None:
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


def each_model(
    model_cfg: DictConfig, tokenizer: Any, adapters: list[str], include_base: bool = True, seed: int = 0
) -> Iterator[tuple[str, Any]]:
    """``(label, model)`` for the base (unless ``include_base`` is false and adapters are given), then each adapter.

    One base is loaded; the first adapter comes with it (or, with none, a fresh LoRA whose update is
    zero and is switched off anyway). Later adapters are loaded beside the active one, activated, and
    the previous one is deleted, so at most two are in memory. The model a step yields is only valid
    until the next step.
    """
    model = get_backend(model_cfg.backend).load_model(
        model_cfg, tokenizer, adapter_path=adapters[0] if adapters else None, trainable=False, seed=seed
    )
    model.eval()
    if include_base or not adapters:
        with model.disable_adapter():
            yield BASE, model
    active = model.active_adapter
    for number, path in enumerate(adapters):
        if number > 0:
            name = f"adapter_{number}"
            model.load_adapter(path, adapter_name=name, is_trainable=False)
            model.set_adapter(name)
            model.delete_adapter(active)
            active = name
            model.eval()
        yield adapter_label(path), model


def _to_accelerator(model: Any, accelerator: str) -> Any:
    """A model the loader left on the CPU (the tiny one) moves to the GPU when the hardware asks for one."""
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available() and model.device.type == "cpu":
        return model.to("cuda")
    return model


def training_run(adapter_path: str) -> dict[str, Any] | None:
    """What trained an adapter saved by train.py (``<run>/adapter``): its val loss, lr, rank and alpha. An
    adapter put beside another run's (``<run>/adapter_copy``) is credited with that run only where its
    record is the run's own adapter's."""
    adapter = Path(adapter_path).expanduser()
    run_dir, own = adapter.parent, adapter.parent / "adapter"
    if not (run_dir / "summary.json").is_file():
        return None
    if adapter.resolve() != own.resolve():
        record = read_run_record(adapter)
        if record is None or record != read_run_record(own):
            return None
    job = read_job(run_dir)
    return {"val_loss": job.val_loss, "lr": job.lr, "r": job.r, "alpha": job.alpha, "run_dir": str(run_dir)}


def resolve_engine(cfg: DictConfig) -> str:
    """``merged`` or ``peft``: what ``engine=auto`` means for this run and this machine.

    Held-out loss is always measured on the model as trained (peft). Otherwise the merged engine runs
    wherever its 16-bit weights fit beside ``MIN_MERGED_ROWS`` rows of KV cache; a GPU too small for
    that falls back to the 4-bit model with the adapter unmerged.
    """
    if cfg.mode == "benchmark" and cfg.benchmark.name == VAL_BENCHMARK:
        return "peft"
    if cfg.engine != "auto":
        return cfg.engine
    if not torch.cuda.is_available():
        return "merged"
    from transformers import AutoModelForCausalLM

    config = get_backend(cfg.model.backend).base_config(cfg.model)
    with torch.device("meta"):
        weights = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters()) * 2
    cache = kv_bytes_per_token(config, torch.bfloat16) * (cfg.max_new_tokens + 1024) * MIN_MERGED_ROWS
    free, _ = torch.cuda.mem_get_info()
    if weights + cache < 0.9 * free:
        return "merged"
    log.warning(
        "engine=auto: the 16-bit weights (%.1f GiB) and a KV cache (%.1f GiB) don't fit the %.1f GiB free: "
        "generating with the 4-bit model and the adapter unmerged (slower)",
        weights / 2**30,
        cache / 2**30,
        free / 2**30,
    )
    return "peft"


def _peft_model_cfg(model_cfg: DictConfig) -> DictConfig:
    """The model config for the peft engine, naming the backend that can load it in this process (Unsloth only
    where eval.py imported it first)."""
    backend = get_backend(model_cfg.backend).in_this_process()
    if backend.name != model_cfg.backend:
        model_cfg = model_cfg.copy()
        with open_dict(model_cfg):
            model_cfg.backend = backend.name
    return model_cfg


def decode_completions(
    decoder: Decoder, tokenizer: Any, prompt_ids: list[list[int]], settings: dict[str, Any]
) -> list[list[str]]:
    """``num_samples`` completions per prompt from the merged engine, as text up to the first EOS."""
    copies = settings["num_samples"]
    eos, pad = special_ids(tokenizer)
    ids = decoder.decode(
        [p for p in prompt_ids for _ in range(copies)],
        eos_id=eos,
        pad_id=pad,
        sampling=Sampling(settings["do_sample"], settings["temperature"], settings["top_p"]),
        seed=settings["seed"],
    )
    texts = [tokenizer.decode(row, skip_special_tokens=False) for row in ids]
    return [texts[i : i + copies] for i in range(0, len(texts), copies)]


# ---------------------------------------------------------------------------------------------- benchmarks


def shared_choices(items: list[BenchmarkItem]) -> tuple[str, ...]:
    """The labels all items are scored over: their common choices, or the union in order (A, B, ... E)."""
    first = items[0].choices
    if all(item.choices == first for item in items):
        return first
    return tuple(sorted({c for item in items for c in item.choices}))


def score_completions(
    items: list[BenchmarkItem], prompts: list[str], completions: list[list[str]], tokenizer: Any = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics and prediction rows from each item's completions (several: majority vote of their answers)."""
    predictions, parsed = [], []
    for item, prompt, outputs in zip(items, prompts, completions, strict=True):
        votes = [extract_answer(out, item) for out in outputs]
        answer = votes[0] if len(votes) == 1 else majority_vote(votes)
        parsed.append(answer)
        row = {"id": item.id, "prompt": prompt, "output": outputs[0], "parsed": answer, "gold": item.gold}
        if len(outputs) > 1:
            row |= {"samples": outputs, "votes": votes}
        predictions.append(row)
    metrics = score(parsed, [item.gold for item in items], shared_choices(items))
    metrics |= reasoning_stats([out for outputs in completions for out in outputs], tokenizer)
    return metrics, predictions


def _generation_settings(cfg: DictConfig) -> dict[str, Any]:
    keys = ("max_new_tokens", "batch_size", "do_sample", "temperature", "top_p", "num_samples", "seed")
    return {key: cfg[key] for key in keys}


def _val_datamodule(cfg: DictConfig, tokenizer: Any, records: dict[str, dict[str, Any]]) -> Any:
    """The data config's validation split: the training run's, checked against the adapters' run records."""
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    if cfg.benchmark.get("batch_size"):
        datamodule.eval_batch_size = int(cfg.benchmark.batch_size)
    datamodule.setup("fit")
    val = datamodule.splits["val"]
    check_held_out(val, records)
    if cfg.limit is not None:
        datamodule.splits["val"] = val.select(subsample(len(val), cfg.limit, cfg.limit_seed))
    return datamodule


def validation_metrics(model: Any, datamodule: Any, cfg: DictConfig) -> dict[str, Any]:
    """Token-weighted loss, perplexity and next-token accuracy of ``model`` on the validation split."""
    from medllm.training.module import ReasoningSFTModule

    module = ReasoningSFTModule(model, optimizer=None)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=cfg.paths.output_dir,
    )
    trainer.validate(module, dataloaders=datamodule.val_dataloader(), verbose=False)
    out = {name: float(value) for name, value in trainer.callback_metrics.items()}
    metrics = {"n": len(datamodule.splits["val"]), "loss": out["val/loss"], "perplexity": out["val/ppl"]}
    if "val/token_accuracy" in out:
        metrics["token_accuracy"] = out["val/token_accuracy"]
    return metrics


def evaluate(cfg: DictConfig) -> list[dict[str, Any]]:
    """Score every model on ``cfg.benchmark``, write the report into ``cfg.paths.output_dir``; returns the results."""
    check_eval_config(cfg)
    L.seed_everything(cfg.seed, verbose=False)
    adapters = find_adapters(cfg.get("adapter_path"), cfg.get("adapters"), cfg.get("sweep_dir"))
    for path in adapters:
        check_adapter_base(path, cfg.model)
    records = run_records(adapters)
    tokenizer = get_backend(cfg.model.backend).load_tokenizer(cfg.model)
    if cfg.mode == "generate":
        answer_question(cfg, tokenizer, adapters)
        return []
    name = cfg.benchmark.name
    if name == VAL_BENCHMARK:  # data and items come first: a bad file stops the run before any model loads
        datamodule = _val_datamodule(cfg, tokenizer, records)
    else:
        settings = _generation_settings(cfg)
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
        model_cfg = _peft_model_cfg(cfg.model)
        models = each_model(model_cfg, tokenizer, adapters, cfg.include_base, cfg.seed)
    results, decoder = [], None
    for label, model in models:
        log.info("%s: %s", name, label)
        if name == VAL_BENCHMARK:
            results.append({"benchmark": name, "model": label, "metrics": validation_metrics(model, datamodule, cfg)})
            continue
        if engine == "merged":
            rows = len(prompt_ids) * cfg.num_samples
            batch_size = None if cfg.batch_size == "auto" else min(cfg.batch_size, rows)  # no slot left idle
            decoder = decoder or Decoder(
                model, max(map(len, prompt_ids)), cfg.max_new_tokens, batch_size, rows, attention=cfg.decode_attention
            )
            completions = decode_completions(decoder, tokenizer, prompt_ids, settings)
        else:
            model = _to_accelerator(model, cfg.trainer.accelerator)
            get_backend(model_cfg.backend).for_inference(model)
            batch_size = 8 if settings["batch_size"] == "auto" else settings["batch_size"]
            completions = generate(model, tokenizer, prompt_ids, **(settings | {"batch_size": batch_size}))
        metrics, predictions = score_completions(items, prompts, completions, tokenizer)
        results.append({"benchmark": name, "model": label, "metrics": metrics, "predictions": predictions})
    for result in results:
        if result["model"] != BASE:
            result["run"] = training_run(result["model"].removeprefix(adapter_label("")))
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
    model_cfg = _peft_model_cfg(cfg.model)
    for label, model in each_model(model_cfg, tokenizer, adapters, cfg.include_base, cfg.seed):
        model = _to_accelerator(model, cfg.trainer.accelerator)
        get_backend(model_cfg.backend).for_inference(model)
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
