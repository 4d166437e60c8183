"""An evaluation when training ends: eval.py on the run's own adapter, its scores in summary.json.

``eval_after_training`` lists eval.py overrides (``benchmark=pubmedqa``, ``benchmark.path=...``,
``limit=200``, ...). The eval config is composed from conf/eval.yaml with them and checked with the
training config, so a typo there fails before training, not after it. When training ends, rank 0 scores
``<run>/adapter`` alone (no base) into ``<run>/eval``, taking model, data and prompt from the adapter's run
record as eval.py does, and its numbers join the summary as ``eval_<metric>``: what ``optimized_metric``
may name for a sweep that should pick adapters by how they answer, not by validation loss.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from medllm.evaluation.run_settings import VAL_BENCHMARK

log = logging.getLogger(__name__)

# The numbers of an evaluation's report that become eval_<name> in the summary, and whether higher is better.
EVAL_METRICS = {
    "accuracy": True, "macro_f1": True, "precision": True, "recall": True, "parse_failures": False,
    "format_rate": True, "loss": False, "perplexity": False, "token_accuracy": True,
}  # fmt: skip
SUMMARY_NAMES = tuple(f"eval_{name}" for name in EVAL_METRICS)
HIGHER_IS_BETTER = tuple(f"eval_{name}" for name, higher in EVAL_METRICS.items() if higher)
# Where the repository keeps its configs, for when no Hydra app is running (a test calling train()).
REPO_CONF = Path(__file__).resolve().parents[3] / "conf"


def eval_overrides(cfg: DictConfig, adapter: Path | None) -> list[str]:
    """The overrides of the evaluation: the hardware training ran on, the user's, then the run's own."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    hardware = "gpu" if accelerator in ("gpu", "cuda") else "cpu"
    out_dir = Path(cfg.paths.output_dir) / "eval"
    return [
        f"hardware={hardware}",
        *cfg.eval_after_training,
        f"adapter_path={adapter}" if adapter else "adapter_path=null",
        "include_base=false",
        "mode=benchmark",
        f"paths.output_dir={out_dir}",
    ]


def compose_eval(overrides: Sequence[str]) -> DictConfig:
    """conf/eval.yaml with ``overrides``, inside train.py's Hydra app or, outside one, from the repository."""
    if GlobalHydra.instance().is_initialized():
        return compose("eval", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(REPO_CONF), version_base="1.3"):
        return compose("eval", overrides=list(overrides))


def check_eval_after_training(cfg: DictConfig) -> None:
    """The evaluation's config and its benchmark's items, checked before training starts (no adapter yet)."""
    from hydra.errors import HydraException

    from medllm.config.validate import ConfigError
    from medllm.config_checks import check_eval_config

    overrides = eval_overrides(cfg, adapter=None)
    try:
        eval_cfg = compose_eval(overrides)
    except HydraException as err:
        raise ConfigError(f"eval_after_training: {_one_line(str(err))}") from None
    try:
        check_eval_config(eval_cfg, overrides)
    except ConfigError as err:
        raise ConfigError(f"eval_after_training: {err}") from None
    if eval_cfg.benchmark.name != VAL_BENCHMARK:  # its items now: a bad file or an unreachable hub
        from medllm.errors import MedllmError
        from medllm.evaluation.benchmarks import load_items

        try:
            load_items(eval_cfg)
        except MedllmError as err:
            raise ConfigError(f"eval_after_training: {err}") from None


def _one_line(message: str) -> str:
    """Hydra's composition error on one line: "Available options in 'benchmark': mcq, medqa, ...", no search path."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = lines[: next((i for i, line in enumerate(lines) if line.startswith("Config search path")), len(lines))]
    listed = next((i for i, line in enumerate(lines) if line.endswith(":")), None)
    if listed is not None:
        lines = [*lines[:listed], f"{lines[listed]} {', '.join(lines[listed + 1 :])}"]
    return "; ".join(lines)


def evaluate_run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Scores ``out_dir/adapter`` as the run was told to; the summary entries ``eval_<metric>``."""
    from medllm.evaluation.run import evaluate
    from medllm.evaluation.run_settings import take_run_settings

    overrides = eval_overrides(cfg, adapter=out_dir / "adapter")
    eval_cfg = compose_eval(overrides)
    take_run_settings(eval_cfg, overrides)  # model, data and prompt of this run, as eval.py takes them
    log.info("evaluating the adapter: %s", " ".join(cfg.eval_after_training))
    (result,) = evaluate(eval_cfg)  # the adapter's only: include_base=false
    metrics = result["metrics"]
    return {"eval_benchmark": eval_cfg.benchmark.name} | {
        f"eval_{name}": metrics[name] for name in EVAL_METRICS if metrics.get(name) is not None
    }
