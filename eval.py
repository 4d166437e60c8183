"""Score the base model and LoRA adapters on a medical benchmark, or answer one question.

    python eval.py benchmark=pubmedqa benchmark.path=data/pubmedqa adapter_path=outputs/.../adapter
    python eval.py benchmark=medical_o1_val adapter_path=outputs/.../adapter   # held-out loss, perplexity
    python eval.py sweep_dir=multirun/2025-01-01/12-00-00 benchmark=medqa limit=200
    python eval.py mode=generate question="..." adapter_path=outputs/.../adapter
    python eval.py suite=medical suite.data_dir=data/benchmarks adapter_path=outputs/.../adapter   # the standard table

An adapter saved by train.py carries its run's record (<run>/adapter/medllm_run.json): the model, data,
max_seq_length and seed not given on the command line are taken from it, and a given one that contradicts it is
refused.

Imports stay light here, as in train.py: the config (and for held-out loss the rows) is checked first, then
Unsloth is imported (before transformers and peft) where the model runs as trained; the merged engine, the
default for benchmarks, needs only transformers.
"""

import signal
import sys

import hydra
from omegaconf import DictConfig

from medllm.config.checks import check_eval_config, check_model_config  # importing medllm.config registers resolvers
from medllm.config.schema import eval_backend, scores_held_out
from medllm.config.secrets import redact_text
from medllm.errors import MedllmError


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    overrides = HydraConfig.get().overrides.task
    signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's stop ends like Ctrl-C: one line, not silence
    try:  # a mistake fails here in seconds, before the backend's slow import
        check_eval_config(cfg, overrides, model_settled=False)  # the model's settings: once taken from the run
        from medllm.evaluation.run_settings import take_run_settings

        take_run_settings(cfg, overrides)  # model, data, seed: those the adapter trained with
        check_model_config(cfg.model)  # the model as it is now settled
        if scores_held_out(cfg):
            from medllm.data.rows import check_data

            check_data(cfg.data)  # a bad row too
        from medllm.models.backends import prepare_backend

        prepare_backend(eval_backend(cfg))
        from medllm.evaluation.evaluate import evaluate

        evaluate(cfg)
    except MedllmError as err:
        sys.exit(f"error: {redact_text(str(err))}")
    except KeyboardInterrupt:
        sys.exit(
            f"error: interrupted before the report was written; the items finished are kept in "
            f"{cfg.paths.output_dir}/predictions.jsonl: run the same command with resume=true to continue there."
        )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cli() -> None:
    from pathlib import Path

    from medllm.config.hints import run

    run(main, Path(__file__).parent / "conf", "eval")  # main(), with a "did you mean" after Hydra's errors


if __name__ == "__main__":
    cli()
