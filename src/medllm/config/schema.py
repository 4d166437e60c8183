"""Every key train.yaml and eval.yaml (and their groups) may hold: its type, its default and its rule.

A new knob is one line here, next to its line in the YAML; a key missing here is refused as unknown
("did you mean ...?"). A default here is the one that applies where a config leaves the key out, so it
equals the YAML's own (tests/unit/test_config_defaults.py): medllm's groups default to what train.yaml and
eval.yaml compose by default, and a group instantiated by ``_target_`` (optimizer, scheduler, logger,
callbacks) to what its class takes. Rules that relate several keys, the machine or files live in
``medllm.config.checks``; the names other layers must agree on (backends, benchmarks, summary metrics)
are declared here, below.

Step counts: trainer.max_steps, trainer.log_every_n_steps, trainer.val_check_interval (an int),
scheduler.num_warmup_steps, callbacks.checkpoint.every_n_train_steps, skip_nonfinite_steps and
throughput_warmup_steps count optimizer steps.
"""

from __future__ import annotations

import importlib.util
import pkgutil
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union

from medllm.config.rules import Listed, Rule, above, at_least, between, dispatch, fraction_or_count, one_of, setting

# Optional[...] and Union[...] rather than "X | None": OmegaConf reads these annotations on Python 3.10.
# setting() and dispatch() return dataclasses.field(...), which RUF009 can't tell.
# ruff: noqa: UP007, UP045, RUF009

POSITIVE = above(0)
COUNT = at_least(0)  # 0 allowed: none
# A step size: above 1 every optimizer here diverges to a uniform output (1e12 for 1e-12 trained without a word).
LEARNING_RATE = between(0, 1, low_open=True)
SEED = between(0, 2**32 - 1)  # what torch and numpy seed generators take
BETAS = Rule("two numbers in [0, 1)", lambda v: len(v) == 2 and all(between(0, 1, high_open=True).ok(b) for b in v))

# The model backends are the modules of this package: a new backend is a module there (and a conf/model file
# naming it). Named here by its dotted path, as a config names a _target_, and listed without importing them.
BACKEND_PACKAGE = "medllm.models.backends"
# The backends whose trained models save GGUF (export.gguf): Unsloth drives llama.cpp's converter.
GGUF_BACKENDS = ("unsloth",)


def backend_names() -> tuple[str, ...]:
    """The registered backends: the public modules of ``BACKEND_PACKAGE``."""
    folders = importlib.util.find_spec(BACKEND_PACKAGE).submodule_search_locations
    return tuple(sorted(m.name for m in pkgutil.iter_modules(folders) if not m.name.startswith("_")))


# How the merged engine's decoding step attends to its KV cache (eval.yaml's decode_attention).
DECODE_ATTENTION = one_of("auto", "sdpa", "flex")
# FlexAttention's CUDA kernels are Triton's, built for Ampere (compute capability 8.0) and newer; on older
# GPUs (T4, V100) they fail to build, or fall back to a dense path that is slower than SDPA.
FLEX_MIN_CAPABILITY = (8, 0)


def _whole(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


DEVICES = Rule(
    "a whole number >= 1, -1 (all), auto, or a list of device indices",
    lambda v: one_of(-1, "auto").ok(v) or _whole(v, 1) or (isinstance(v, list) and all(_whole(i, 0) for i in v)),
)
PRECISIONS = one_of(
    "32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true", "32", "bf16", "16", "64", 32, 16, 64
)  # fmt: skip


# ---------------------------------------------------------------------------------------------- model
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Lora:
    r: int = setting(8, POSITIVE)
    alpha: int = setting(16, POSITIVE)
    dropout: float = setting(0.0, between(0, 1, high_open=True))
    target_modules: list[str] = setting(factory=lambda: list(LLAMA_PROJECTIONS))
    use_rslora: bool = False


@dataclass
class TinyModel:
    vocab_size: int = setting(512, POSITIVE)
    hidden_size: int = setting(64, POSITIVE)
    num_hidden_layers: int = setting(2, POSITIVE)
    num_attention_heads: int = setting(4, POSITIVE)
    num_key_value_heads: int = setting(2, POSITIVE)
    intermediate_size: int = setting(128, POSITIVE)
    seed: int = setting(0, SEED)


@dataclass
class Model:
    backend: str = setting("tiny", Listed(backend_names))
    name_or_path: Optional[str] = None
    revision: Optional[str] = None
    tiny: Optional[TinyModel] = setting(factory=TinyModel)
    dtype: str = setting("float32", one_of("auto", "float32", "bfloat16", "float16"))
    load_in_4bit: bool = False
    attn_implementation: Optional[str] = "sdpa"
    gradient_checkpointing: Any = setting(False, one_of(False, True, "unsloth", "auto"))
    max_seq_length: int = setting(1024, POSITIVE)
    lora: Lora = setting(factory=Lora)


# ---------------------------------------------------------------------------------------------- data
# Named, since the data layer's functions check the values they are given by these same rules.
SOURCES = one_of("sample", "hub", "local")
TRAIN_ON = one_of("completion", "all")
ON_BAD_ROW = one_of("error", "skip")
TOO_LONG = one_of("drop", "truncate")
PHI_CHECK = one_of("warn", "error", "off")


@dataclass
class Columns:
    question: str = "Question"
    reasoning: str = "Complex_CoT"
    response: str = "Response"


@dataclass
class Data:
    _target_: str = "medllm.data.datamodule.ReasoningDataModule"
    source: str = setting("sample", SOURCES)
    path: Optional[str] = None
    hub_name: str = "FreedomIntelligence/medical-o1-reasoning-SFT"
    subset: str = "en"
    revision: Optional[str] = None
    hub_token: Optional[str] = None
    columns: Columns = setting(factory=Columns)
    instruction: Optional[str] = None
    train_on: str = setting("completion", TRAIN_ON)
    on_bad_row: str = setting("error", ON_BAD_ROW)
    too_long: str = setting("drop", TOO_LONG)
    phi_check: str = setting("warn", PHI_CHECK)
    val_size: Union[int, float] = setting(0.2, fraction_or_count(min_count=1, whole_fraction=False))
    test_path: Optional[str] = None
    max_seq_length: int = setting(1024, POSITIVE)
    packing: bool = False
    packed_static_shape: bool = True
    group_by_length: bool = False
    batch_size: int = setting(4, POSITIVE)
    eval_batch_size: Optional[int] = setting(None, POSITIVE)
    pad_to_multiple_of: int = setting(8, at_least(1))
    num_workers: int = setting(0, COUNT)
    num_proc: int = setting(1, at_least(1))
    cache_dir: Optional[str] = None
    seed: int = setting(42, SEED)


# What a problem file may be laid out as (medllm.tasks.problems.PROBLEM_FORMATS reads each); auto: told by its
# fields.
PROBLEM_FORMATS = ("auto", "mcq", "medqa", "medmcqa", "pubmedqa", "open_ended")


@dataclass
class ProblemData:
    """Problems with checkable answers, for reinforcement learning (``stage=grpo``)."""

    _target_: str = "medllm.rl.data.ProblemDataModule"
    # Neither path nor hub_name: the packaged sample.
    path: Optional[str] = None
    hub_name: Optional[str] = None
    subset: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = None
    hub_token: Optional[str] = None
    format: str = setting("auto", one_of(*PROBLEM_FORMATS))
    instruction: Optional[str] = None
    val_size: Union[int, float] = setting(0.1, fraction_or_count(min_count=1, whole_fraction=False))
    batch_size: int = setting(4, POSITIVE)  # prompts per optimizer step, each process
    eval_batch_size: Optional[int] = setting(None, POSITIVE)
    max_seq_length: int = setting(1024, POSITIVE)
    seed: int = setting(42, SEED)


DATA_MODULES = {
    "medllm.data.datamodule.ReasoningDataModule": Data,
    "medllm.rl.data.ProblemDataModule": ProblemData,
}


# ---------------------------------------------------------------------------------------------- optimizer
@dataclass
class AdamW8bit:  # bitsandbytes
    _target_: str = "bitsandbytes.optim.AdamW8bit"
    _partial_: bool = True
    lr: float = setting(1.0e-3, LEARNING_RATE)
    weight_decay: float = setting(1.0e-2, COUNT)
    betas: list[float] = setting(factory=lambda: [0.9, 0.999], rule=BETAS)
    eps: float = setting(1e-8, POSITIVE)


@dataclass
class AdamW(AdamW8bit):  # torch
    _target_: str = "torch.optim.AdamW"
    # torch's kernel choices: fused (one launch for all weights), foreach; null lets torch choose.
    fused: Optional[bool] = None
    foreach: Optional[bool] = None
    amsgrad: bool = False


OPTIMIZERS = {
    "torch.optim.AdamW": AdamW,
    "bitsandbytes.optim.AdamW8bit": AdamW8bit,
    "bitsandbytes.optim.PagedAdamW8bit": AdamW8bit,
}


# ---------------------------------------------------------------------------------------------- scheduler
@dataclass
class LinearSchedule:
    _target_: str = "transformers.get_linear_schedule_with_warmup"
    _partial_: bool = True
    num_warmup_steps: int = setting(0, COUNT)  # optimizer steps


@dataclass
class CosineSchedule(LinearSchedule):
    _target_: str = "transformers.get_cosine_schedule_with_warmup"
    num_cycles: float = setting(0.5, POSITIVE)


SCHEDULERS = {
    "transformers.get_linear_schedule_with_warmup": LinearSchedule,
    "transformers.get_cosine_schedule_with_warmup": CosineSchedule,
}


# ---------------------------------------------------------------------------------------------- logger
@dataclass
class CSVLogger:
    _target_: str = "lightning.pytorch.loggers.CSVLogger"
    save_dir: str = "."
    name: Optional[str] = "lightning_logs"
    version: Union[int, str, None] = None


WANDB_MODE = one_of("online", "offline", "disabled")
# What the WANDB_MODE environment variable may hold for W&B (its older names too).
WANDB_ENVIRONMENT_MODES = ("online", "offline", "disabled", "dryrun", "run")


@dataclass
class WandbLogger:
    _target_: str = "lightning.pytorch.loggers.WandbLogger"
    project: Optional[str] = None
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None
    tags: list[str] = setting(factory=list)
    notes: Optional[str] = None
    save_dir: str = "."
    mode: Optional[str] = setting(None, WANDB_MODE)
    log_model: Any = setting(False, one_of(False, True, "all"))
    # medllm's own knobs (not WandbLogger's): a table of sample generations at each validation.
    log_samples: bool = True
    num_samples: int = setting(4, POSITIVE)
    sample_max_new_tokens: int = setting(128, POSITIVE)


LOGGERS = {"lightning.pytorch.loggers.CSVLogger": CSVLogger, "lightning.pytorch.loggers.WandbLogger": WandbLogger}


# ---------------------------------------------------------------------------------------------- callbacks
@dataclass
class ModelCheckpoint:
    _target_: str = "lightning.pytorch.callbacks.ModelCheckpoint"
    dirpath: Optional[str] = None
    filename: Optional[str] = None
    auto_insert_metric_name: bool = True
    monitor: Optional[str] = None
    mode: str = setting("min", one_of("min", "max"))
    every_n_train_steps: Optional[int] = setting(None, COUNT)  # optimizer steps; 0: none
    every_n_epochs: Optional[int] = setting(None, COUNT)
    save_top_k: int = setting(1, at_least(0, {-1: "keep all"}))
    save_last: Optional[bool] = None
    save_on_train_epoch_end: Optional[bool] = None
    verbose: bool = False


@dataclass
class TQDMProgressBar:
    _target_: str = "lightning.pytorch.callbacks.TQDMProgressBar"
    refresh_rate: int = setting(1, COUNT)
    process_position: int = setting(0, COUNT)
    leave: bool = False


@dataclass
class Preemption:
    _target_: str = "medllm.training.preemption.Preemption"
    requeue_signal: str = setting("SIGUSR1", one_of("SIGUSR1", "SIGUSR2", "USR1", "USR2"))
    requeue: bool = True


CALLBACKS = {
    "lightning.pytorch.callbacks.ModelCheckpoint": ModelCheckpoint,
    "lightning.pytorch.callbacks.TQDMProgressBar": TQDMProgressBar,
    "medllm.training.preemption.Preemption": Preemption,
}


# ---------------------------------------------------------------------------------------------- trainer
@dataclass
class Hardware:
    """The hardware group's keys (train.py's and eval.py's ``trainer``)."""

    accelerator: str = setting("cpu", one_of("auto", "cpu", "gpu", "cuda", "mps"))
    devices: Any = setting(1, DEVICES)
    strategy: Any = "auto"
    precision: Any = setting("32-true", PRECISIONS)
    num_nodes: int = setting(1, at_least(1))


@dataclass
class Trainer(Hardware):
    """Lightning Trainer keys medllm passes on (add one here to use it), and two it applies itself."""

    max_steps: int = setting(-1, at_least(1, {-1: "run max_epochs instead"}))  # optimizer steps
    max_epochs: Optional[int] = setting(1, at_least(1, {-1: "no limit"}))
    accumulate_grad_batches: int = setting(1, at_least(1))
    gradient_clip_val: Optional[float] = setting(1.0, at_least(0))  # 0 or null: no clipping
    val_check_interval: Union[int, float, None] = setting(1.0, fraction_or_count(min_count=1))  # optimizer steps
    check_val_every_n_epoch: Optional[int] = setting(1, at_least(1))
    limit_val_batches: Union[int, float] = setting(1.0, fraction_or_count(min_count=0, zero_fraction=True))
    limit_train_batches: Union[int, float] = setting(1.0, fraction_or_count(min_count=1))
    log_every_n_steps: int = setting(10, COUNT)  # optimizer steps; 0: no training rows
    num_sanity_val_steps: int = setting(0, at_least(0, {-1: "all"}))
    deterministic: Any = setting(None, one_of(None, False, True, "warn"))
    profiler: Optional[str] = setting(None, one_of("simple", "advanced", "pytorch"))
    enable_progress_bar: Optional[bool] = None
    enable_model_summary: Optional[bool] = None


# ---------------------------------------------------------------------------------------------- stage
@dataclass
class SFTStage:
    """Supervised fine-tuning on reasoning rows: the loss of the trained tokens."""

    _target_: str = "medllm.training.stage.SFT"


# GRPO's policy losses (TRL's loss_type names): how token losses are averaged into the step's loss.
LOSS_TYPES = one_of("grpo", "dapo", "dr_grpo")
# How a completion's reward minus its group's mean is scaled (TRL's scale_rewards): by the group's standard
# deviation, the whole batch's, or not at all (Dr. GRPO).
SCALE_REWARDS = one_of("group", "batch", "none")


@dataclass
class Reward:
    """One reward function of ``stage.rewards``: a callable taking TRL's reward signature, and its weight."""

    fn: Any = setting(rule=Rule("a group of settings with _target_", lambda v: isinstance(v, dict) and "_target_" in v))
    weight: float = 1.0


def _default_rewards() -> dict[str, Reward]:
    return {
        "correctness": Reward({"_target_": "medllm.rl.rewards.Correctness"}, 1.0),
        "format": Reward({"_target_": "medllm.rl.rewards.ThinkFormat"}, 0.2),
    }


@dataclass
class GRPOStage:
    """Group-relative policy optimisation on problems with checkable answers; knobs keep TRL's GRPOConfig names."""

    _target_: str = "medllm.rl.stage.GRPO"
    num_generations: int = setting(8, at_least(2))
    max_completion_length: int = setting(1024, POSITIVE)
    temperature: float = setting(1.0, above(0))
    top_p: float = setting(1.0, between(0, 1, low_open=True))
    beta: float = setting(0.0, at_least(0))
    epsilon: float = setting(0.2, between(0, 1, low_open=True, high_open=True))
    epsilon_high: Optional[float] = setting(0.28, above(0))
    loss_type: str = setting("dapo", LOSS_TYPES)
    scale_rewards: str = setting("group", SCALE_REWARDS)
    num_iterations: int = setting(1, at_least(1))
    mask_truncated_completions: bool = False
    rewards: dict[str, Reward] = setting(factory=_default_rewards)
    micro_batch_size: int = setting(8, POSITIVE)  # completions per forward and backward pass
    rollout_batch_size: Union[int, str] = setting("auto", at_least(1, {"auto": "every completion of a step"}))
    decode_attention: str = setting("auto", DECODE_ATTENTION)
    log_completions_every: int = setting(10, COUNT)  # optimizer steps; 0: never
    contamination: str = setting("warn", one_of("warn", "error", "off"))


STAGES = {"medllm.training.stage.SFT": SFTStage, "medllm.rl.stage.GRPO": GRPOStage}


# ---------------------------------------------------------------------------------------------- train.yaml
# The numbers of an evaluation's report that eval_after_training adds to a run's summary as eval_<name>, and
# whether higher is better.
EVAL_METRICS = {
    "accuracy": True, "macro_f1": True, "precision": True, "recall": True, "parse_failures": False,
    "format_rate": True, "loss": False, "perplexity": False, "token_accuracy": True,
}  # fmt: skip
# The numbers in a run's summary.json, by stage (STAGES' keys): what a sweep may optimize (optimized_metric), and
# whether higher is better.
STAGE_SUMMARY_METRICS = {
    SFTStage._target_: {
        "val_loss": False, "val_ppl": False, "train_loss_first": False, "train_loss_last": False,
        "tokens_per_s": True, "trained_tokens_per_s": True, "peak_mem_gib": False,
    },
    GRPOStage._target_: {  # greedy accuracy and mean reward on the validation problems, the last step's
        "val_accuracy": True, "val_reward": True, "train_reward_last": True, "train_accuracy_last": True,
        "train_loss_first": False, "train_loss_last": False, "rollout_tokens_per_s": True, "peak_mem_gib": False,
    },
}  # fmt: skip
SUMMARY_METRICS = {
    **{name: higher for metrics in STAGE_SUMMARY_METRICS.values() for name, higher in metrics.items()},
    **{f"eval_{name}": higher for name, higher in EVAL_METRICS.items()},  # with eval_after_training
}


@dataclass
class Paths:
    output_dir: str = "."
    cache_dir: str = "~/.cache/medllm"


@dataclass
class Export:
    merged_16bit: bool = False
    gguf: Optional[str] = None
    llama_cpp_dir: str = "llama.cpp"


@dataclass
class TrainConfig:
    seed: int = setting(42, SEED)
    max_seq_length: int = setting(1024, POSITIVE)
    ckpt_path: Optional[str] = None
    skip_nonfinite_steps: int = setting(0, COUNT)  # optimizer steps
    throughput_warmup_steps: int = setting(1, COUNT)  # optimizer steps
    lora_alpha_ratio: Optional[float] = setting(None, POSITIVE)  # hparams_search=lr_rank_grid
    optimized_metric: Optional[str] = setting(None, one_of(None, *SUMMARY_METRICS))  # what train.py returns
    eval_after_training: Optional[list[str]] = None  # eval.py overrides, e.g. [benchmark=pubmedqa, limit=200]
    init_adapter: Optional[str] = None  # an adapter folder to train on from (an SFT run's, for GRPO)
    stage: Any = dispatch("_target_", STAGES, strict=True)
    model: Model = setting(factory=Model)
    data: Any = dispatch("_target_", DATA_MODULES, strict=True)
    optimizer: Any = dispatch("_target_", OPTIMIZERS)
    scheduler: Any = dispatch("_target_", SCHEDULERS)
    trainer: Trainer = setting(factory=Trainer)
    # one logger, or several by name (logger=many); ~logger: none
    logger: Any = dispatch("_target_", LOGGERS, many=None, optional=True)
    callbacks: Any = dispatch("_target_", CALLBACKS, many=True)
    export: Export = setting(factory=Export)
    paths: Paths = setting(factory=Paths)


# ---------------------------------------------------------------------------------------------- eval.yaml
@dataclass
class Benchmark:
    """A benchmark of generated answers: each model answers its questions, scored against a gold label."""

    # What the benchmark scores, declared here so that no code compares benchmark names:
    # held_out: False: generated answers (any engine); True: the loss of the rows the adapter's training run
    # held out, on the model as trained (4-bit, adapter unmerged), from the data group's rows.
    held_out: ClassVar[bool] = False

    name: str = "pubmedqa"
    # A file or folder of the benchmark (mcq: required); null: the hub's copy.
    path: Optional[str] = None
    instruction: Optional[str] = None


@dataclass
class MedMCQA(Benchmark):
    cop_base: Optional[int] = setting(None, one_of(0, 1))


@dataclass
class MedicalO1Val(Benchmark):
    """Scores the data group's validation split; path and instruction are accepted (and unused) so that one
    sweep over benchmarks can pass ``++benchmark.path``."""

    held_out: ClassVar[bool] = True

    name: str = "medical_o1_val"
    batch_size: Optional[int] = setting(None, POSITIVE)


BENCHMARKS = {
    "pubmedqa": Benchmark,
    "medqa": Benchmark,
    "medmcqa": MedMCQA,
    "mcq": Benchmark,
    "medical_o1_val": MedicalO1Val,
}


# The benchmarks a suite may hold (medllm.tasks.suites.SUITE_BENCHMARKS reads each), and the evaluation protocols
# (medllm.tasks.protocols): how questions are asked and answers read.
SUITE_BENCHMARK_NAMES = ("medqa", "medmcqa", "pubmedqa", "mmlu_medical", "mmlu_pro_medical", "gpqa_medical")
PROTOCOLS = one_of("strict", "huatuogpt_o1")


@dataclass
class Suite:
    """Several benchmarks scored in one evaluation into one report (``suite=medical``)."""

    name: str = "medical"
    benchmarks: list[str] = setting(
        factory=lambda: list(SUITE_BENCHMARK_NAMES),
        rule=Rule(
            f"a non-empty list of distinct names among {SUITE_BENCHMARK_NAMES}",
            lambda v: bool(v) and len(set(v)) == len(v) and set(v) <= set(SUITE_BENCHMARK_NAMES),
        ),
    )
    data_dir: Optional[str] = None
    instruction: Optional[str] = None


@dataclass
class Protocol:
    name: str = setting("strict", PROTOCOLS)


@dataclass
class EvalConfig:
    mode: str = setting("benchmark", one_of("benchmark", "generate"))
    question: Optional[str] = None
    adapter_path: Optional[str] = None
    adapters: list[str] = setting(factory=list)
    sweep_dir: Optional[str] = None
    include_base: bool = True
    limit: Optional[int] = setting(None, POSITIVE)
    limit_seed: int = setting(0, SEED)
    seed: int = setting(42, SEED)
    max_seq_length: int = setting(1024, POSITIVE)
    max_new_tokens: int = setting(2048, POSITIVE)
    batch_size: Union[int, str] = setting("auto", at_least(1, {"auto": "chosen to fit"}))
    engine: str = setting("auto", one_of("auto", "merged", "peft"))
    decode_attention: str = setting("auto", DECODE_ATTENTION)
    do_sample: bool = False
    temperature: float = setting(0.6, at_least(0))
    top_p: float = setting(0.95, between(0, 1, low_open=True))
    num_samples: int = setting(1, POSITIVE)
    force_answers: bool = True
    budgets: list[int] = setting(
        factory=list, rule=Rule("a list of whole numbers > 0 (tokens)", lambda v: all(POSITIVE.ok(b) for b in v))
    )
    resume: bool = False
    model: Model = setting(factory=Model)
    data: Any = dispatch("_target_", DATA_MODULES, strict=True)
    trainer: Hardware = setting(factory=Hardware)
    benchmark: Any = dispatch("name", BENCHMARKS, strict=True)
    suite: Optional[Suite] = None
    protocol: Protocol = setting(factory=Protocol)
    logger: Any = dispatch("_target_", LOGGERS, many=None, optional=True)
    paths: Paths = setting(factory=Paths)


def is_grpo(cfg: Any) -> bool:
    """Whether a training config runs the GRPO stage."""
    stage = cfg.get("stage")
    return stage is not None and stage.get("_target_") == GRPOStage._target_


def training_backend(cfg: Any) -> str | None:
    """The backend a training run prepares first: the configured one, except for GRPO, whose policy is the base
    in 16-bit through transformers (``medllm.rl.policy``): Unsloth is not imported at all."""
    return None if is_grpo(cfg) else cfg.model.backend


def scores_held_out(cfg: Any) -> bool:
    """Whether an eval config scores held-out rows (a loss) rather than generated answers (a suite always does)."""
    if cfg.get("suite") is not None:
        return False
    return cfg.mode == "benchmark" and BENCHMARKS.get(cfg.benchmark.name, Benchmark).held_out


def eval_backend(cfg: Any) -> str | None:
    """The backend an evaluation prepares first: the configured one where the model runs as trained (4-bit, the
    adapter unmerged: engine=peft, mode=generate, held-out loss); none for the merged engine, which needs only
    transformers."""
    as_trained = cfg.engine == "peft" or cfg.mode == "generate" or scores_held_out(cfg)
    return cfg.model.backend if as_trained else None
