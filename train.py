"""Fine-tune DeepSeek-R1-Distill-Llama-8B (or the tiny CPU model) with LoRA / QLoRA.

    python train.py experiment=smoke                # a minute on a CPU
    python train.py experiment=qlora_r16            # one GPU, Unsloth
    python train.py -m experiment=qlora_r16 hparams_search=lr_rank_grid
    python train.py experiment=qlora_r16 --cfg job  # print the composed config, load nothing

Imports stay light here: Unsloth must be imported before transformers and peft to patch them, so
medllm's training code (which imports both) is imported only after the backend is known, and the
config is checked before that (Unsloth takes ~40 s to import on a GPU machine; a typo fails in seconds).
"""

import sys

import hydra
from omegaconf import DictConfig

from medllm.config.checks import check_train_config  # importing medllm.config registers its resolvers
from medllm.config.resolvers import process_rank
from medllm.config.secrets import redact_text
from medllm.errors import MedllmError


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:  # a mistake fails here in seconds, before the backend's slow import
        check_train_config(cfg, HydraConfig.get().overrides.task)
        from medllm.workflows.inputs import check_inputs  # rows and files: no model library yet

        check_inputs(cfg)  # a bad row, or a bad file of the evaluation after training
        from medllm.config.schema import training_backend
        from medllm.models.backends import prepare_backend

        prepare_backend(training_backend(cfg))
        from medllm.workflows.train_eval import train_and_evaluate

        # What a sweeper optimizes (hparams_search=optuna): a number from the run's summary.
        metric = cfg.get("optimized_metric")
        value = train_and_evaluate(cfg).get(metric or "val_loss")
        if metric and value is None and process_rank() == 0:  # rank 0 alone evaluates
            raise MedllmError(f"optimized_metric={metric}: this run's summary.json has no value for it")
        return value
    except MedllmError as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra marks this job failed and runs the rest of the sweep
        sys.exit(f"error: {redact_text(str(err))}")


def check_sweep(cfg: DictConfig) -> None:
    """The settings every job of a sweep shares, checked once before any job starts (``-m``)."""
    from medllm.workflows.inputs import check_eval_items

    check_train_config(cfg)
    check_eval_items(cfg)


def cli() -> None:
    from pathlib import Path

    from medllm.config.hints import run

    run(main, Path(__file__).parent / "conf", "train", check_sweep)  # main(), with a "did you mean" after errors


if __name__ == "__main__":
    cli()
