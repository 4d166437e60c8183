"""The real train.yaml composes with every experiment and search, and the knobs sit where the README says."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from medllm.config.schema import EvalConfig, TrainConfig
from medllm.config.schema_check import validate
from tests.helpers.cli import train_py
from tests.helpers.configs import CONF, compose_train

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def options(*groups: str) -> list[str]:
    """``group=option`` for every option of each group (conf/<group>/*.yaml)."""
    return [f"{group}={p.stem}" for group in groups for p in sorted((CONF / group).glob("*.yaml"))]


def test_experiment_files_start_with_their_command():
    for name in EXPERIMENTS:
        lines = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()
        assert lines[0] == "# @package _global_"  # Hydra reads the package header on the first lines only
        assert lines[1] == f"# python train.py experiment={name}"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_resolves(experiment, tmp_path):
    cfg = compose_train(f"experiment={experiment}", f"paths.output_dir={tmp_path}")
    OmegaConf.resolve(cfg)
    assert cfg.optimizer.lr > 0 and cfg.model.lora.r > 0
    assert cfg.data.max_seq_length == cfg.max_seq_length == cfg.model.max_seq_length


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_and_its_sweep_pass_the_schema(experiment, tmp_path):
    validate(compose_train(f"experiment={experiment}", f"paths.output_dir={tmp_path}"), TrainConfig)
    sweep = compose_train(f"experiment={experiment}", "hparams_search=lr_rank_grid", f"paths.output_dir={tmp_path}")
    validate(sweep, TrainConfig)


@pytest.mark.parametrize(
    "option", options("model", "data", "optimizer", "scheduler", "hardware", "logger", "callbacks")
)
def test_every_train_group_option_passes_the_schema(option, tmp_path):
    validate(compose_train("experiment=smoke", option, f"paths.output_dir={tmp_path}"), TrainConfig)


@pytest.mark.parametrize("option", options("benchmark", "model", "data", "hardware"))
def test_every_eval_group_option_passes_the_schema(option, tmp_path):
    validate(compose_train(option, f"paths.output_dir={tmp_path}", config_name="eval"), EvalConfig)


def test_qlora_r16_is_the_documented_recipe(tmp_path):
    cfg = compose_train("experiment=qlora_r16", f"paths.output_dir={tmp_path}")
    assert cfg.model.backend == "unsloth" and cfg.model.name_or_path == "unsloth/DeepSeek-R1-Distill-Llama-8B"
    assert cfg.model.load_in_4bit and (cfg.model.lora.r, cfg.model.lora.alpha) == (16, 16)
    assert len(cfg.model.lora.target_modules) == 7
    assert cfg.optimizer.lr == 2e-4 and cfg.max_seq_length == 2048
    assert cfg.trainer.precision == "bf16-mixed"


def test_command_line_knobs_land_where_documented(tmp_path):
    cfg = compose_train(
        "experiment=smoke",
        "trainer.max_steps=7",
        "model.lora.r=4",
        "model.lora.alpha=8",
        "optimizer.lr=1e-3",
        f"paths.output_dir={tmp_path}",
    )
    assert (cfg.trainer.max_steps, cfg.model.lora.r, cfg.model.lora.alpha, cfg.optimizer.lr) == (7, 4, 8, 1e-3)


def test_hparams_search_composes(tmp_path):
    cfg = compose_train("experiment=smoke", "hparams_search=lr_rank_grid", f"paths.output_dir={tmp_path}")
    params = cfg.hydra.sweeper.params
    assert set(params) >= {"optimizer.lr", "model.lora.r"}


def test_cfg_job_prints_qlora_config_without_loading_anything():
    out = train_py("experiment=qlora_r16", "--cfg", "job")
    cfg = OmegaConf.create(out.stdout)
    assert cfg.model.name_or_path == "unsloth/DeepSeek-R1-Distill-Llama-8B"
    assert "Traceback" not in out.stderr
