"""A sweep's shared settings are checked once, before Hydra launches any job."""

from __future__ import annotations

import pytest

from medllm.config.checks import check_train_config
from medllm.config.sweep_check import shared_settings_error
from tests.helpers.cli import train_py
from tests.helpers.configs import CONF
from tests.helpers.extras import needs_optuna


def test_a_mistake_every_job_shares_ends_the_sweep_before_any_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    out = train_py(
        "-m", "experiment=smoke", "hparams_search=lr_rank_grid", "model.lora.dropout=1.5",
        f"hydra.sweep.dir={sweep_dir}", check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.count("model.lora.dropout=1.5 must be a number in [0, 1)") == 1
    assert "no job was launched" in out.stderr and "Traceback" not in out.stderr
    assert not sweep_dir.exists()


CASES = [
    (["-m", "experiment=smoke", "hparams_search=optuna", "model.lora.dropout=1.5"], "model.lora.dropout=1.5"),
    (
        ["--multirun", "experiment=smoke", "hparams_search=optuna", "hydra.sweeper.direction=maximize"],
        "set hydra.sweeper.direction=minimize",
    ),
    (
        ["-m", "experiment=smoke", "hparams_search=optuna", "hydra.sweeper.n_trials=0"],
        "hydra.sweeper.n_trials=0 must be a whole number >= 1",
    ),
    (["-m", "experiment=smoke", "hparams_search=optuna", "hydra.sweeper.n_jobs=-1"], "hydra.sweeper.n_jobs=-1"),
    # Search ranges (given as a sweep of the key: Optuna's search space on the command line) it can't sample:
    # its ValueError came once the study had started.
    (
        [
            "-m",
            "experiment=smoke",
            "hparams_search=optuna",
            "optimizer.lr=tag(log, interval(0, 1e-3))",
        ],
        "optimizer.lr: a log-scale search interval needs a low bound above 0",
    ),
    (
        ["-m", "experiment=smoke", "hparams_search=optuna", "optimizer.lr=interval(1e-3, 1e-5)"],
        "optimizer.lr: the search interval's low bound must be below its high bound",
    ),
    # A swept key's values are the jobs' to check: 0.1 is a valid one.
    (["-m", "experiment=smoke", "model.lora.dropout=1.5,0.1"], None),
    # Swept by the sweeper's own params (hparams_search=optuna sweeps model.lora.r).
    (["-m", "experiment=smoke", "hparams_search=optuna", "model.lora.r=0"], None),
    (["-m", "experiment=smoke", "hparams_search=lr_rank_grid"], None),  # nothing wrong
    # Lightning's own launcher would re-run the whole sweep in each process it starts.
    (
        ["-m", "experiment=smoke", "hardware=ddp_cpu", "trainer.devices=2", "optimizer.lr=0.01,0.02"],
        "a sweep (-m) of runs with trainer.devices=2 needs a launcher",
    ),
    (["experiment=smoke", "model.lora.dropout=1.5"], None),  # not a sweep: train.py's own check says it
    (["-m", "experiment=smok"], None),  # Hydra's own error, which it reports when it composes
    (["-m", "--config-name", "eval", "limit=0"], None),  # another config: its jobs check it
    (["-m", "experiment=smoke", "model.lora.dropout=1.5", "--help"], None),  # Hydra's help, as before
    # Jobs on this machine: no GPU here is every job's mistake.
    (["-m", "experiment=qlora_r16", "hparams_search=lr_rank_grid"], "no CUDA GPU is visible"),
    # SLURM jobs see their nodes' GPUs, files and environment, not this machine's.
    (["-m", "experiment=qlora_r16", "hparams_search=lr_rank_grid", "hydra/launcher=slurm"], None),
    # A swept group: its options set other keys (both experiments use the Unsloth backend gguf needs).
    (["-m", "experiment=smoke,qlora_r16", "export.gguf=q4_k_m", "hardware=cpu"], None),
    (["-m", "experiment=smoke", "~model.tiny"], "~model.tiny deletes a setting the run needs"),
    (
        ["-m", "experiment=smoke", "hparams_search=lr_rank_grid", "~model.lora.dropout"],
        "~model.lora.dropout deletes",
    ),
    (["-m", "experiment=smoke", "hparams_search=lr_rank_grid", "~callbacks.preemption"], None),
    # Only a job resolves ${hydra:job...}: the rest of the config is checked without it.
    (["-m", "experiment=smoke", "logger=wandb", "logger.name=${hydra:job.override_dirname}"], None),
    (["-m", "experiment=smoke", "logger=wandb", "model.lora.dropout=1.5"], "model.lora.dropout=1.5"),
]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [pytest.param(*case, marks=needs_optuna) if "hparams_search=optuna" in case[0] else case for case in CASES],
)
def test_shared_settings_are_checked_without_what_is_swept(argv, expected):
    error = shared_settings_error(CONF, "train", argv, check_train_config)
    assert error == expected if expected is None else expected in error
