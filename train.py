"""Fine-tune DeepSeek-R1-Distill-Llama-8B (or the tiny CPU model) with LoRA / QLoRA.

    python train.py experiment=smoke                # a minute on a CPU
    python train.py experiment=qlora_r16            # one GPU, Unsloth
    python train.py -m experiment=qlora_r16 hparams_search=lr_rank_grid
    python train.py experiment=qlora_r16 --cfg job  # print the composed config, load nothing

Imports stay light here: Unsloth must be imported before transformers and peft to patch them, so
medllm's training code (which imports both) is imported only after the backend is known, and the
config is checked before that (Unsloth takes ~40 s to import on a GPU machine; a typo fails in seconds).
"""

import os
import sys

import hydra
from omegaconf import DictConfig

from medllm.resolvers import register as register_resolvers

register_resolvers()  # before Hydra composes: configs use ${medllm.mul:...}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from medllm.config_checks import check_train_config
    from medllm.errors import MedllmError

    try:  # a mistake fails here in seconds, before the backend's slow import
        check_train_config(cfg, HydraConfig.get().overrides.task)
        from medllm.data.validate import check_data

        check_data(cfg.data)  # and so does a bad row
        from medllm.backend import import_backend

        import_backend(cfg.model.backend)
        from medllm.training.run import train

        # What a sweeper optimizes (hparams_search=optuna): a number from the run's summary.
        metric = cfg.get("optimized_metric")
        value = train(cfg).get(metric or "val_loss")
        if metric and value is None and os.environ.get("RANK", "0") == "0":  # rank 0 alone evaluates
            raise MedllmError(f"optimized_metric={metric}: this run's summary.json has no value for it")
        return value
    except MedllmError as err:
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra marks this job failed and runs the rest of the sweep
        from medllm.training.secrets import redact_text

        sys.exit(f"error: {redact_text(str(err))}")


if __name__ == "__main__":
    from pathlib import Path

    from medllm.config_checks import check_train_config
    from medllm.override_hints import run
    from medllm.sweep_check import shared_settings_error

    conf = Path(__file__).parent / "conf"
    shared = shared_settings_error(conf, "train", sys.argv[1:], check_train_config)  # -m: once, not per job
    if shared:
        from medllm.training.secrets import redact_text

        sys.exit(f"error: {redact_text(shared)}\n(a setting every job of the sweep shares: no job was launched)")
    run(main, conf, "train")  # main(), with a "did you mean" after Hydra's errors
