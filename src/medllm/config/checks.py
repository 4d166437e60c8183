"""Every rule of a composed config, checked in one pass before any data or model is loaded.

``check_train_config`` and ``check_eval_config`` run the schema (``medllm.config.schema``: types, ranges,
choices, unknown keys), then what relates several keys or the machine (the GPU, the launcher, precision
with a 4-bit base, the model a backend can load), then the files and folders the config names
(``medllm.config.inputs``). Each failure is a one-line ``ConfigError`` that names the key and says what to
change. torch is imported only where a GPU is asked for, so a typo fails in the time it takes to start
Python.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from medllm.config import inputs
from medllm.config.compose import compose_config
from medllm.config.resolvers import configured, launcher
from medllm.config.schema import (
    FLEX_MIN_CAPABILITY,
    GGUF_BACKENDS,
    STAGE_SUMMARY_METRICS,
    SUMMARY_METRICS,
    WANDB_ENVIRONMENT_MODES,
    EvalConfig,
    GRPOStage,
    ProblemData,
    TrainConfig,
    is_grpo,
    scores_held_out,
)
from medllm.config.schema_check import validate
from medllm.errors import ConfigError

# Config groups whose absence is their default (train.yaml lists them as null): ~experiment is the plain config.
PRESET_GROUPS = ("experiment", "hparams_search")

log = logging.getLogger(__name__)


def check_train_config(cfg: DictConfig, overrides: Sequence[str] | None = None) -> None:
    """``overrides``: the command line's (Hydra's ``overrides.task``); None: those ``cfg.hydra`` holds, if any."""
    _check_schema(cfg, overrides, TrainConfig)
    check_model_config(cfg.model)
    trainer = cfg.trainer
    if trainer.get("max_steps", -1) == -1 and trainer.get("max_epochs") in (None, -1):
        raise ConfigError(
            f"trainer.max_steps=-1 (run max_epochs) needs trainer.max_epochs >= 1, not "
            f"{trainer.get('max_epochs')}: the run would not end; set one of them."
        )
    _check_stage(cfg)
    _check_hardware(cfg)
    _check_launcher(cfg)
    _check_wandb_environment(cfg)
    inputs.writable_dir(Path(cfg.paths.output_dir))
    _check_optimized_metric(cfg)
    inputs.memory_cap_gib()  # read when the model loads: a bad value fails here instead
    gguf = cfg.get("export", {}).get("gguf")
    if gguf:
        check_gguf(gguf, cfg.model.backend, cfg.export.llama_cpp_dir)
    inputs.checkpoint_file(cfg.get("ckpt_path"))


def _check_stage(cfg: DictConfig) -> None:
    """The stage and its data agree (SFT trains on reasoning rows, GRPO on problems), and GRPO's settings fit
    the run: a completion limit inside max_seq_length, reward functions that import."""
    grpo, problems = is_grpo(cfg), cfg.data.get("_target_") == ProblemData._target_
    if grpo and not problems:
        raise ConfigError(
            "stage=grpo trains on problems with checkable answers: use data=problems (data.path=<your .jsonl>); "
            f"data._target_={cfg.data.get('_target_')} holds SFT rows."
        )
    if problems and not grpo:
        raise ConfigError(
            "data=problems holds problems for reinforcement learning (stage=grpo); stage=sft trains on reasoning "
            "rows: data=sample | medical_o1 | local."
        )
    if cfg.get("init_adapter") and not grpo:
        raise ConfigError(
            f"init_adapter={cfg.init_adapter} starts stage=grpo from an adapter; stage=sft trains a new one "
            "(to train a run further, resume it: hydra.run.dir=<run> ckpt_path=auto trainer.max_steps=<more>)."
        )
    if not grpo:
        inputs.data_files(cfg.data)
        return
    if cfg.data.get("path"):
        inputs.problems_path(cfg.data.path)
    stage = cfg.stage
    limit, context = stage.get("max_completion_length", GRPOStage.max_completion_length), cfg.data.max_seq_length
    if limit >= context:
        raise ConfigError(
            f"stage.max_completion_length={limit} leaves no room for a prompt within max_seq_length={context}: "
            "raise max_seq_length (prompt + completion) or lower stage.max_completion_length."
        )
    for name, reward in (stage.get("rewards") or {}).items():
        inputs.importable(f"stage.rewards.{name}.fn._target_", reward.fn.get("_target_"))
    if stage.get("decode_attention") == "flex":
        _check_flex_gpu(str(cfg.trainer.get("accelerator", "auto")))


def check_eval_config(cfg: DictConfig, overrides: Sequence[str] | None = None, model_settled: bool = True) -> None:
    """``overrides``: as for ``check_train_config``. ``model_settled`` False: the model settings may still be
    taken from an adapter's run record (eval.py checks the command first), so they are checked later."""
    _check_schema(cfg, overrides, EvalConfig)
    if model_settled:
        check_model_config(cfg.model)
    if cfg.mode == "generate" and not str(cfg.get("question") or "").strip():
        raise ConfigError('mode=generate needs a question: question="A 60-year-old man presents with ..."')
    if cfg.do_sample and cfg.temperature <= 0:
        raise ConfigError(
            f"temperature={cfg.temperature} must be > 0 with do_sample=true; for greedy decoding set do_sample=false."
        )
    if cfg.engine == "peft" and cfg.decode_attention != "auto":
        raise ConfigError(
            f"decode_attention={cfg.decode_attention} is the merged engine's; engine=peft generates with "
            "transformers' generate. Use engine=merged, or leave decode_attention out."
        )
    if cfg.num_samples > 1 and not cfg.do_sample:
        raise ConfigError(
            f"num_samples={cfg.num_samples} needs do_sample=true: greedy decoding gives the same completion each time."
        )
    _check_generated_answers(cfg)
    if cfg.mode == "benchmark" and cfg.get("suite") is not None:
        given = [o for o in overrides or [] if o.lstrip("+~").split("=")[0].split(".")[0] == "benchmark"]
        if given:
            raise ConfigError(
                f"{given[0]} with suite={cfg.suite.name}: a suite scores its own benchmarks (suite.benchmarks, read "
                "from suite.data_dir); leave benchmark out, or drop the suite to score one benchmark."
            )
        inputs.suite_data_dir(cfg.suite.get("data_dir"))
    elif cfg.mode == "benchmark":
        bench = cfg.benchmark
        if scores_held_out(cfg):
            inputs.data_files(cfg.data, f"benchmark={bench.name} with data=local needs data.path=<file>.")
        elif OmegaConf.is_missing(bench, "path"):
            raise ConfigError(f"benchmark={bench.name} needs benchmark.path=<a .json or .jsonl file>.")
        else:
            inputs.benchmark_path(bench.get("path"))
    _check_hardware(cfg)
    _check_wandb_environment(cfg)
    if cfg.decode_attention == "flex" and cfg.engine != "peft":
        _check_flex_gpu(str(cfg.trainer.get("accelerator", "auto")))
    inputs.writable_dir(Path(cfg.paths.output_dir))


def _check_generated_answers(cfg: DictConfig) -> None:
    """Budgets within the completions generated, a protocol only where answers are generated."""
    budgets = list(cfg.get("budgets") or [])
    past = [b for b in budgets if b > cfg.max_new_tokens]
    if past:
        raise ConfigError(
            f"budgets={budgets}: {past} past max_new_tokens={cfg.max_new_tokens}; the budgets cut one generation of "
            f"max_new_tokens, so raise it to {max(budgets)} or leave those budgets out."
        )
    protocol = cfg.get("protocol", {}).get("name", "strict")
    if protocol != "strict" and scores_held_out(cfg):
        raise ConfigError(
            f"protocol={protocol} asks questions and reads answers; benchmark={cfg.benchmark.name} scores the loss of "
            "held-out rows: leave protocol out, or choose a benchmark (or suite) of questions."
        )


def check_model_config(model_cfg: DictConfig) -> None:
    """A model config its backend can't load, and flash_attention_2 without the flash-attn package: said now,
    not in a traceback once the model loads. The tiny backend builds its model from ``model.tiny``; every other
    backend loads ``model.name_or_path``."""
    backend = model_cfg.backend
    if backend == "tiny":
        if model_cfg.get("name_or_path") is not None:
            raise ConfigError(
                f"model.name_or_path={model_cfg.name_or_path} is for model.backend=hf or unsloth; "
                "model.backend=tiny builds the tiny random model from model.tiny."
            )
        if model_cfg.get("tiny") is None:
            raise ConfigError(
                "model.backend=tiny needs model.tiny: its sizes and seed, as conf/model/tiny_llama.yaml has."
            )
        if model_cfg.get("load_in_4bit"):
            raise ConfigError(
                "model.load_in_4bit=true, but model.backend=tiny builds its model in float32 and would train it "
                "unquantized; quantize with model.backend=hf (a GPU and bitsandbytes), or leave load_in_4bit out."
            )
    elif not model_cfg.get("name_or_path"):
        raise ConfigError(
            f"model.backend={backend} needs model.name_or_path (a hub id or a local folder); "
            "model=tiny_llama (model.backend=tiny) builds the tiny random model instead."
        )
    if model_cfg.get("attn_implementation") == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(
            "model.attn_implementation=flash_attention_2 needs the flash-attn package, which is not installed: "
            "pip install flash-attn, or use model.attn_implementation=sdpa."
        )


def check_gguf(quantization: str, backend: str, llama_cpp_dir: str | Path) -> None:
    """``export.gguf``: a backend whose models save GGUF, and llama.cpp built to quantize it."""
    if backend not in GGUF_BACKENDS:
        raise ConfigError(
            f"export.gguf={quantization} needs model.backend={' or '.join(GGUF_BACKENDS)}, not {backend}; or use "
            "export.merged_16bit=true (and convert it with llama.cpp's convert_hf_to_gguf.py)."
        )
    inputs.find_llama_cpp(llama_cpp_dir)


def _check_schema(cfg: DictConfig, overrides: Sequence[str] | None, schema: type) -> None:
    """The schema's checks, deleted settings included (see ``validate``), and no config group deleted whose
    options set the run's settings: ``~hardware`` would train with Lightning's own precision and devices."""
    if overrides is None:
        overrides = OmegaConf.select(cfg, "hydra.overrides.task", default=None) or []
    deletions = [o for o in overrides if o.startswith("~")]
    deleted = [o.key_or_group for o in OverridesParser.create().parse_overrides(deletions)] if deletions else []
    fields = {field.name for field in dataclasses.fields(schema)}
    for group in deleted:
        if "." not in group and "/" not in group and group not in fields and group not in PRESET_GROUPS:
            raise ConfigError(
                f"~{group} removes the {group} group, whose settings the run needs; choose one of its options "
                f"instead ({group}=<option>)."
            )
    validate(cfg, schema, deleted)


def eval_after_training_config(cfg: DictConfig, adapter: Path | None) -> tuple[DictConfig, list[str]]:
    """The evaluation ``eval_after_training`` asks for, as eval.py would compose it, and its overrides: the
    hardware training ran on, the user's, then the run's own (its adapter, alone, into ``<run>/eval``)."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    overrides = [
        f"hardware={'gpu' if accelerator in ('gpu', 'cuda') else 'cpu'}",
        *cfg.eval_after_training,
        f"adapter_path={adapter}" if adapter else "adapter_path=null",
        "include_base=false",
        "mode=benchmark",
        f"paths.output_dir={Path(cfg.paths.output_dir) / 'eval'}",
    ]
    return compose_config("eval", overrides), overrides


def _check_eval_after_training(cfg: DictConfig) -> None:
    """The evaluation's config, checked before training starts (no adapter yet)."""
    from hydra.errors import HydraException

    try:
        eval_cfg, overrides = eval_after_training_config(cfg, adapter=None)
    except HydraException as err:
        raise ConfigError(f"eval_after_training: {_one_line(str(err))}") from None
    try:
        check_eval_config(eval_cfg, overrides)
    except ConfigError as err:
        raise ConfigError(f"eval_after_training: {err}") from None
    if eval_cfg.get("suite") is not None:
        raise ConfigError(
            f"eval_after_training: suite={eval_cfg.suite.name} scores several benchmarks; a run's summary takes the "
            "scores of one benchmark: give one (benchmark=...), and score the suite with eval.py afterwards."
        )


def _one_line(message: str) -> str:
    """Hydra's composition error on one line: "Available options in 'benchmark': mcq, medqa, ...", no search path."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = lines[: next((i for i, line in enumerate(lines) if line.startswith("Config search path")), len(lines))]
    listed = next((i for i, line in enumerate(lines) if line.endswith(":")), None)
    if listed is not None:
        lines = [*lines[:listed], f"{lines[listed]} {', '.join(lines[listed + 1 :])}"]
    return "; ".join(lines)


def _check_optimized_metric(cfg: DictConfig) -> None:
    """What a sweep optimizes must be in every trial's summary, and be optimized the right way (by an Optuna
    sweeper that runs trials)."""
    metric = cfg.get("optimized_metric")
    if metric in ("val_loss", "val_ppl") and cfg.trainer.get("limit_val_batches") == 0:
        raise ConfigError(
            f"optimized_metric={metric} needs validation, and trainer.limit_val_batches=0 turns it off: "
            "every trial would return nothing to the sweeper."
        )
    stage = cfg.stage.get("_target_")
    if metric and not metric.startswith("eval_") and metric not in STAGE_SUMMARY_METRICS.get(stage, SUMMARY_METRICS):
        name = "grpo" if stage == GRPOStage._target_ else "sft"
        raise ConfigError(
            f"optimized_metric={metric} is not in a stage={name} run's summary; choose one of "
            f"{', '.join(STAGE_SUMMARY_METRICS[stage])} (or an eval_ score with eval_after_training)."
        )
    if cfg.get("eval_after_training"):
        _check_eval_after_training(cfg)
    elif metric and metric.startswith("eval_"):
        raise ConfigError(
            f"optimized_metric={metric} is a score of an evaluation after training: give one, e.g. "
            '\'eval_after_training=["benchmark=pubmedqa","benchmark.path=data/pubmedqa","limit=200"]\'.'
        )
    sweeper = _sweeper(cfg)
    _check_trial_counts(sweeper)
    direction = sweeper.get("direction") if sweeper is not None else None
    if metric and isinstance(direction, str):
        wanted = "maximize" if SUMMARY_METRICS[metric] else "minimize"
        if direction != wanted:
            raise ConfigError(
                f"optimized_metric={metric} with hydra.sweeper.direction={direction}: the sweep would look for "
                f"the worst trials; set hydra.sweeper.direction={wanted}."
            )


def _sweeper(cfg: DictConfig) -> DictConfig | None:
    """The sweeper's config (a config composed with Hydra's, or the running app's); None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = cfg.get("hydra") or (HydraConfig.get() if HydraConfig.initialized() else None)
    return OmegaConf.select(hydra_cfg, "sweeper") if hydra_cfg is not None else None


def _check_trial_counts(sweeper: DictConfig | None) -> None:
    """An Optuna sweep of no trials ended in Optuna's "Record does not exist" traceback, after the study
    was created in the sweep dir."""
    if sweeper is None or "optuna" not in str(sweeper.get("_target_", "")).lower():
        return
    for key in ("n_trials", "n_jobs"):
        value = sweeper.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"hydra.sweeper.{key}={value} must be a whole number >= 1.")
    check_search_space({f"hydra.sweeper.params.{k}": v for k, v in (sweeper.get("params") or {}).items()})


def check_search_space(params: Mapping[str, Any]) -> None:
    """Intervals Optuna can sample: low below high, and above 0 on a log scale (it raised its ValueError once
    the study had started). ``params``: the sweeper's (text) or the command line's sweeps (parsed)."""
    from hydra.core.override_parser.types import IntervalSweep

    for key, given in params.items():
        value = given
        if isinstance(given, str):
            try:
                value = OverridesParser.create().parse_override(f"{key}={given}").value()
            except Exception:  # Hydra's own message names a syntax error when it parses the sweep
                continue
        if not isinstance(value, IntervalSweep):
            continue
        where = f"{key}={given}" if isinstance(given, str) else key
        if not value.start < value.end:
            raise ConfigError(f"{where}: the search interval's low bound must be below its high bound.")
        if "log" in value.tags and value.start <= 0:
            raise ConfigError(
                f"{where}: a log-scale search interval needs a low bound above 0 "
                f"(e.g. 'tag(log, interval(1e-6, {value.end:g}))')."
            )


def _check_hardware(cfg: DictConfig) -> None:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision in ("16", "16-mixed", "16-true"):
        raise ConfigError("trainer.precision=16-mixed is not supported (loss scaling); use bf16-mixed or 32-true.")
    if precision == "bf16-true" and cfg.model.get("load_in_4bit"):
        raise ConfigError("trainer.precision=bf16-true casts and breaks the 4-bit base; use bf16-mixed.")
    strategy = cfg.trainer.get("strategy")
    if isinstance(strategy, str) and any(start in strategy for start in ("spawn", "fork", "notebook")):
        raise ConfigError(
            f"trainer.strategy={strategy} is not supported: processes it starts hand no adapter or summary back to "
            "this one. Start them with torchrun: torchrun --nproc_per_node <N> train.py hardware=ddp (or ddp_cpu)."
        )
    if accelerator not in ("gpu", "cuda"):
        return
    import torch  # seconds to import: only here, where a GPU is asked for

    if not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use hardware=cpu (and model=tiny_llama or "
            "model=r1_distill_llama_8b_hf) on this machine."
        )
    if precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"trainer.precision={precision} but this GPU has no bfloat16; use trainer.precision=32-true.")


def _check_wandb_environment(cfg: DictConfig) -> None:
    """``WANDB_MODE`` as W&B will read it, where a W&B logger is configured: an empty or misspelt value made
    wandb's settings raise a traceback once the data was prepared."""
    logger = cfg.get("logger")
    if logger is None or "wandb" not in str(OmegaConf.to_container(logger, resolve=False)).lower():
        return
    value = os.environ.get("WANDB_MODE")
    if value is not None and value not in WANDB_ENVIRONMENT_MODES:
        raise ConfigError(
            f"WANDB_MODE={value!r} (in the environment) must be online, offline or disabled: unset it "
            "(medllm picks online with an API key, else offline) or set logger.mode."
        )


def _check_flex_gpu(accelerator: str) -> None:
    """decode_attention=flex on the GPU eval.py would use: its kernels need compute capability 8.0 or newer."""
    import torch

    if accelerator == "cpu" or not torch.cuda.is_available():
        return
    capability = torch.cuda.get_device_capability()
    if capability < FLEX_MIN_CAPABILITY:
        raise ConfigError(
            f"decode_attention=flex needs a GPU of compute capability {'.'.join(map(str, FLEX_MIN_CAPABILITY))} or "
            f"newer (A100, L4, H100, ...) for FlexAttention's kernels; {torch.cuda.get_device_name()} is "
            f"{'.'.join(map(str, capability))}. Use decode_attention=sdpa, or auto (which picks sdpa on this GPU)."
        )


def _check_launcher(cfg: DictConfig) -> None:
    """trainer.num_nodes and trainer.devices as the launcher started the processes: otherwise Lightning
    would wait for processes that never come, or give two processes one rank. Without a launcher, a sweep of
    runs of several processes is refused: Lightning's own launcher would re-run the whole sweep in each."""
    given = configured(cfg.trainer)
    started = launcher()
    if started is None:
        several = [f"trainer.{key}={value}" for key, value in given.items() if isinstance(value, int) and value != 1]
        ddp = str(OmegaConf.select(cfg, "trainer.strategy._target_", default="")).endswith("DDPStrategy")
        if ddp and not several:
            log.warning(
                "a DDP run with no torchrun or srun to start its processes trains in one; start N with torchrun "
                "--nproc_per_node N train.py ..."
            )
        nodes = given.get("num_nodes")
        if isinstance(nodes, int) and nodes > 1 and not _in_multirun(cfg):
            raise ConfigError(
                f"trainer.num_nodes={nodes} needs a launcher that starts a process on every node; run as plain python, "
                f"this one would wait forever for the other {nodes - 1} at 'Initializing distributed'. Start it with "
                f"torchrun --nnodes {nodes} --nproc_per_node <N> --rdzv-endpoint <host:port> train.py hardware=ddp "
                "on each node, or with srun in an sbatch script (README: Sweeps and several GPUs)."
            )
        if several and _in_multirun(cfg):
            raise ConfigError(
                f"a sweep (-m) of runs with {' and '.join(several)} needs a launcher that starts the processes: "
                "torchrun --nproc_per_node <N> train.py -m hardware=ddp ..., or hydra/launcher=slurm_ddp "
                "(Lightning's own launcher would re-run the whole sweep in every process)."
            )
        return
    # A number other than the launcher's, and also auto or -1, which Lightning resolves by the devices it sees.
    wrong = [
        f"trainer.{key}={given[key]} but {started[want]} {unit}"
        for key, want, unit in (("num_nodes", "nodes", "node(s)"), ("devices", "devices", "process(es) a node"))
        if given[key] != started[want]
    ]
    if wrong:
        raise ConfigError(
            f"{' and '.join(wrong)} started by {started['by']}: leave both to hardware=ddp (or ddp_cpu), which "
            "follows the launcher, or launch the nodes and processes the config says."
        )


def _in_multirun(cfg: DictConfig) -> bool:
    """Whether the run is a job of a sweep, or (``hydra.mode`` set) a sweep's shared settings checked before
    any job starts."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    mode = OmegaConf.select(cfg, "hydra.mode")
    if mode is None and HydraConfig.initialized():
        mode = HydraConfig.get().mode
    return mode == RunMode.MULTIRUN
