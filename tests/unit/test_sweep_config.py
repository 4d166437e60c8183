"""The sweep's config (alpha following the rank, the summary callback, the SLURM launcher) and the summary
written from job dirs, including failed and unfinished jobs. Fast: no training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from medllm.config import resolvers
from medllm.runs.jobs import ERROR_NAME
from medllm.sweeps import summary
from medllm.sweeps.callback import SweepSummary
from tests.helpers.configs import CONF, compose_train
from tests.helpers.extras import needs_slurm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- resolvers --------------------------------------------------------------------------------------
def test_mul_gives_an_int_when_whole():
    assert resolvers.mul(8, 2.0) == 16 and isinstance(resolvers.mul(8, 2.0), int)
    assert resolvers.mul(8, 0.3) == pytest.approx(2.4)
    with pytest.raises(TypeError):
        resolvers.mul(8, "2")


def test_sweep_name_is_the_sweep_dir_in_a_multirun_only(tmp_path):
    assert resolvers.sweep_name() is None  # no Hydra app running
    before = HydraConfig.instance().cfg
    try:
        for mode, expected in ((RunMode.RUN, None), (RunMode.MULTIRUN, f"{tmp_path}/sweep")):
            cfg = compose_train("experiment=smoke", f"hydra.sweep.dir={tmp_path}/sweep", f"paths.output_dir={tmp_path}")
            cfg.hydra.mode = mode
            HydraConfig.instance().set_config(cfg)
            assert resolvers.sweep_name() == expected
    finally:
        HydraConfig.instance().cfg = before


# ---- the search file --------------------------------------------------------------------------------
def test_lr_rank_grid_keeps_its_header():
    lines = (CONF / "hparams_search" / "lr_rank_grid.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1] == "# python train.py -m experiment=qlora_r16 hparams_search=lr_rank_grid"


@pytest.mark.parametrize(("experiment", "ratio", "r"), [("smoke", None, 8), ("qlora_r16", "2", 32)])
def test_alpha_follows_the_rank_by_the_ratio(experiment, ratio, r, tmp_path):
    overrides = [f"experiment={experiment}", "hparams_search=lr_rank_grid", f"model.lora.r={r}"]
    overrides += [f"lora_alpha_ratio={ratio}"] if ratio else []
    cfg = compose_train(*overrides, f"paths.output_dir={tmp_path}")
    assert cfg.hydra.callbacks.sweep_summary._target_ == "medllm.sweeps.callback.SweepSummary"
    assert set(cfg.hydra.sweeper.params) == {"optimizer.lr", "model.lora.r"}
    assert cfg.model.lora.alpha == r * float(ratio or 1.0)
    assert isinstance(cfg.model.lora.alpha, int)


@needs_slurm
def test_slurm_launcher_composes():
    target = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    cfg = compose_train(
        "experiment=qlora_r16", "hparams_search=lr_rank_grid", "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=a100", "hydra.launcher.gpus_per_node=1", "hydra.launcher.timeout_min=90",
        "hydra.launcher.cpus_per_task=6", "hydra.launcher.mem_gb=48",
    )  # fmt: skip
    launcher = cfg.hydra.launcher
    assert launcher._target_ == target
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("a100", 1, 90)
    assert (launcher.cpus_per_task, launcher.mem_gb) == (6, 48)
    # medllm's preset: the plugin's launcher with the documented defaults, each overridable.
    cfg = compose_train("experiment=qlora_r16", "hydra/launcher=slurm", "hydra.launcher.partition=h100")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == target and launcher.partition == "h100"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.cpus_per_task) == (1, 1, 8)
    assert (launcher.mem_gb, launcher.timeout_min) == (64, 720)


# ---- the summary from job dirs ----------------------------------------------------------------------
def fake_job(sweep_dir: Path, num: int, lr: float, r: int, val_loss: float | None = None, error: str | None = None):
    """A job dir as Hydra and train.py leave it: .hydra/{hydra,config,overrides}.yaml, summary.json."""
    job_dir = sweep_dir / str(num)
    (job_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": num}}}), job_dir / ".hydra" / "hydra.yaml")
    config = {
        "lora_alpha_ratio": 2.0,
        "optimizer": {"lr": lr},
        "model": {"lora": {"r": r, "alpha": "${medllm.mul:${model.lora.r},${lora_alpha_ratio}}"}},
        "paths": {"output_dir": "${hydra:runtime.output_dir}"},  # unresolvable outside Hydra: never read
    }
    OmegaConf.save(OmegaConf.create(config), job_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create([f"optimizer.lr={lr}", f"model.lora.r={r}"]), job_dir / ".hydra" / "overrides.yaml")
    if val_loss is not None:
        numbers = {"val_loss": val_loss, "tokens_per_s": 100.0 + num, "peak_mem_gib": 1.5, "steps": 6}
        (job_dir / "summary.json").write_text(json.dumps(numbers))
    if error is not None:
        (job_dir / ERROR_NAME).write_text(error)
    return job_dir


def test_summary_lists_failed_and_unfinished_jobs_and_picks_the_best(tmp_path):
    fake_job(tmp_path, 0, 1e-4, 8, val_loss=2.5)
    fake_job(tmp_path, 1, 1e-4, 16, error="torch.OutOfMemoryError: CUDA out of memory")
    fake_job(tmp_path, 2, 2e-4, 8, val_loss=2.25)
    fake_job(tmp_path, 10, 2e-4, 16)  # killed, or still running: no summary.json, no error
    best = summary.write_summary(tmp_path)
    assert best is not None and best.job == 2

    with (tmp_path / summary.CSV_NAME).open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "failed"), ("2", "ok"), ("10", "incomplete")]
    assert [int(r["alpha"]) for r in rows] == [16, 32, 16, 32]
    assert rows[1]["error"].startswith("torch.OutOfMemoryError") and rows[1]["val_loss"] == ""
    assert rows[2]["overrides"] == "optimizer.lr=0.0002 model.lora.r=8"

    info = json.loads((tmp_path / summary.BEST_NAME).read_text())
    assert (info["job"], info["val_loss"], info["lr"], info["r"], info["alpha"]) == (2, 2.25, 2e-4, 8, 16)
    assert info["command"] == "python train.py optimizer.lr=0.0002 model.lora.r=8"
    assert (info["jobs"], info["jobs_ok"]) == (4, 2)
    assert [(j["job"], j["status"]) for j in info["failed_jobs"]] == [(1, "failed"), (10, "incomplete")]
    assert (tmp_path / summary.PLOT_NAME).read_bytes()[:8] == PNG_MAGIC


def test_summary_without_a_finished_job_has_no_best(tmp_path):
    fake_job(tmp_path, 0, 1e-4, 8, error="ValueError: boom")
    (tmp_path / summary.BEST_NAME).write_text("{}")  # stale, from an earlier sweep into the same dir
    assert summary.write_summary(tmp_path) is None
    assert not (tmp_path / summary.BEST_NAME).exists() and not (tmp_path / summary.PLOT_NAME).exists()
    assert (tmp_path / summary.CSV_NAME).read_text().count("\n") == 2
    assert summary.main([str(tmp_path)]) == 0 and summary.main([str(tmp_path / "nope")]) == 1


def test_callback_records_a_failed_job_and_updates_the_summary(tmp_path):
    job_dir = fake_job(tmp_path, 0, 1e-4, 8)
    fake_job(tmp_path, 1, 2e-4, 8, val_loss=3.0)
    config = OmegaConf.create(
        {
            "hydra": {
                "mode": RunMode.MULTIRUN,
                "runtime": {"output_dir": str(job_dir)},
                "sweep": {"dir": "relative/elsewhere", "subdir": "0"},
            }
        }
    )
    failed = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("diverged"))
    SweepSummary().on_job_end(config, failed)
    assert (job_dir / ERROR_NAME).read_text().strip() == "RuntimeError: diverged"
    assert json.loads((tmp_path / summary.BEST_NAME).read_text())["failed_jobs"][0]["error"] == "RuntimeError: diverged"

    with open_dict(config):
        config.hydra.mode = RunMode.RUN
    (tmp_path / summary.CSV_NAME).unlink()
    SweepSummary().on_job_end(config, failed)  # a single run: nothing to summarise
    assert not (tmp_path / summary.CSV_NAME).exists()


def test_each_swept_key_gets_a_column_and_the_best_names_its_values(tmp_path):
    for num, (batch, val_loss) in enumerate([(2, 2.5), (4, 2.0), (8, 2.25)]):
        job_dir = fake_job(tmp_path, num, 1e-4, 8, val_loss=val_loss)
        overrides = ["experiment=smoke", f"data.batch_size={batch}", "optimizer.lr=0.0001"]  # lr: the same in all
        OmegaConf.save(OmegaConf.create(overrides), job_dir / ".hydra" / "overrides.yaml")
        config = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        config.data = {"batch_size": batch}
        OmegaConf.save(config, job_dir / ".hydra" / "config.yaml")
    best = summary.write_summary(tmp_path)

    with (tmp_path / summary.CSV_NAME).open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert "data.batch_size" in reader.fieldnames
    assert "experiment" not in reader.fieldnames and "optimizer.lr" not in reader.fieldnames  # not varied
    assert [int(r["data.batch_size"]) for r in rows] == [2, 4, 8]
    info = json.loads((tmp_path / summary.BEST_NAME).read_text())
    assert best.job == info["job"] == 1 and info["swept"] == {"data.batch_size": 4}
    assert "data.batch_size=4" in info["command"]
    assert (tmp_path / summary.PLOT_NAME).read_bytes()[:8] == PNG_MAGIC


def test_keys_the_sweeper_searches_are_swept_from_the_first_job(tmp_path):
    fake_job(tmp_path, 0, 1e-4, 8, val_loss=2.0)
    params = {"optimizer.lr": "interval(1e-5, 1e-2)", "model.lora.r": "choice(8, 16)"}
    OmegaConf.save(OmegaConf.create({"hydra": {"sweeper": {"params": params}}}), tmp_path / "multirun.yaml")
    results = summary.collect(tmp_path)
    assert summary.swept_keys(results, tmp_path) == ["optimizer.lr", "model.lora.r"]
    assert summary.columns(summary.swept_keys(results, tmp_path)) == summary.COLUMNS  # both have a column already
