"""DDP on 2 CPU processes (gloo) trains exactly what 1 process with 2-fold gradient accumulation trains.

Both runs see the same rows in each optimizer step: the data module draws one order per epoch from the
seed and, under DDP, hands each process its slice of every global batch of ``batch_size x world_size``
rows, which is the rows one process takes in ``world_size`` accumulated micro-batches. The loss is
weighted by trained tokens across micro-batches and processes, so the updates, and the adapters, match
up to float rounding (the rows are padded in different groups).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.cli import free_port, train_py
from tests.helpers.configs import ROOT
from tests.helpers.runs import torchrun

pytestmark = pytest.mark.slow

# 20 training rows, 4 validation rows (the sample has 24), and a validation set that splits evenly over 2
# processes. Plain SGD: unlike Adam, its update is proportional to the gradient, so a wrong gradient scale
# (the world_size / tokens rescaling after DDP's averaging) shows in the adapter.
COMMON = (
    "experiment=smoke", "data.val_size=4",
    "optimizer._target_=torch.optim.SGD", "~optimizer.betas", "scheduler.num_warmup_steps=0",
    "trainer.log_every_n_steps=1",
)  # fmt: skip
# One epoch of the 20 rows in global batches of 3 x 2 (3 on each of 2 processes, or 2 x 3 accumulated in one):
# three steps of 6 rows and a short last one of 2, which the single process trains as its last step (one
# micro-batch of the 7, accumulation 2).
EPOCH = (*COMMON, "trainer.max_steps=-1", "trainer.max_epochs=1", "data.batch_size=3")
STEPS_IN_EPOCH = 4
LR = "optimizer.lr=1.0"


# Scored when training ends, by rank 0 alone under DDP: the validation rows' loss, every row of them.
EVAL_AFTER = 'eval_after_training=["benchmark=medical_o1_val"]'


def one_process(*args: str) -> None:
    """train.py in this process, on one thread as the DDP processes run: the same float reductions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_py("trainer.accumulate_grad_batches=2", *args)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp_cpu")
    ddp = torchrun("hardware=ddp_cpu", EVAL_AFTER, *EPOCH, LR, f"hydra.run.dir={base / 'ddp'}")
    one_process(EVAL_AFTER, *EPOCH, LR, f"hydra.run.dir={base / 'single'}")
    return base / "ddp", base / "single", ddp.stdout + ddp.stderr


def test_ddp_really_ran_two_processes(runs):
    _, _, output = runs
    assert "MEMBER: 2/2" in output  # Lightning's "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2"


def test_ddp_adapter_equals_single_process_with_accumulation(runs):
    ddp_dir, single_dir, _ = runs
    ddp = load_file(ddp_dir / "adapter" / "adapter_model.safetensors")
    single = load_file(single_dir / "adapter" / "adapter_model.safetensors")
    assert ddp.keys() == single.keys() and ddp
    # LoRA B starts at zero: a trained adapter moved it far beyond the tolerance below.
    assert max(w.abs().max().item() for k, w in single.items() if "lora_B" in k) > 1e-3
    for key in ddp:
        torch.testing.assert_close(ddp[key], single[key], rtol=0, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")


def test_ddp_summary_matches_single_process(runs):
    ddp_dir, single_dir, _ = runs
    ddp = json.loads((ddp_dir / "summary.json").read_text())
    single = json.loads((single_dir / "summary.json").read_text())
    assert ddp["steps"] == single["steps"] == STEPS_IN_EPOCH
    # Losses are reduced over processes (training) or synced (validation): the same numbers.
    for key in ("train_loss_first", "train_loss_last", "val_loss"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-5), key
    # tokens/s counts the tokens of every process: the same rows as the single process's timed steps.
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["timed_tokens"] == single["timed_tokens"] > 0


def test_ddp_evaluation_after_training_scores_every_validation_row_as_one_process_does(runs):
    ddp_dir, single_dir, _ = runs
    ddp = json.loads((ddp_dir / "summary.json").read_text())
    single = json.loads((single_dir / "summary.json").read_text())
    assert ddp["eval_benchmark"] == single["eval_benchmark"] == "medical_o1_val"
    assert ddp["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-5)
    assert ddp["eval_loss"] == pytest.approx(ddp["val_loss"], rel=1e-5)  # the same rows, the same adapter


def train_metrics(run_dir) -> list[dict[str, float]]:
    """Per-optimizer-step train/* metrics from the CSV logger (rank 0 writes it under DDP), one row a step."""
    with (run_dir / "csv" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return [{k: float(v) for k, v in row.items() if k.startswith("train/") and v} for row in rows]


def test_ddp_steps_see_the_same_tokens_and_gradients(runs):
    ddp_dir, single_dir, _ = runs
    ddp, single = train_metrics(ddp_dir), train_metrics(single_dir)
    assert len(ddp) == len(single) == STEPS_IN_EPOCH
    for step, (d, s) in enumerate(zip(ddp, single)):
        assert d["train/tokens_trained"] == s["train/tokens_trained"], step  # the same rows in each step
        # The norm after rescaling by world_size / tokens (before clipping): the same gradient.
        assert d["train/grad_norm"] == pytest.approx(s["train/grad_norm"], rel=1e-5), step
        assert d["train/loss"] == pytest.approx(s["train/loss"], rel=1e-5), step


def test_two_nodes_of_one_process_train_what_one_process_with_accumulation_trains(runs, tmp_path):
    """torchrun --nnodes 2 --node_rank 0/1, rendezvous on localhost: hardware=ddp_cpu takes num_nodes=2 and
    devices=1 from torchrun's variables, and the adapter is the single-process one."""
    _, single_dir, _ = runs
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "two_nodes"
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(rank),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                "train.py",
                "hardware=ddp_cpu",
                *EPOCH,
                LR,
                f"hydra.run.dir={run_dir}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "MEMBER: 2/2" in outputs[0] + outputs[1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS_IN_EPOCH
    two = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    single = load_file(single_dir / "adapter" / "adapter_model.safetensors")
    assert two.keys() == single.keys() and two
    for key in two:
        assert (two[key] - single[key]).abs().max() <= 1e-6, key


def test_an_epoch_ending_in_a_short_global_batch_trains_every_row_as_one_process_does(runs):
    """The last global batch holds 2 rows: one to each process, not left out of the epoch."""
    ddp_dir, single_dir, _ = runs
    ddp, single = train_metrics(ddp_dir), train_metrics(single_dir)
    assert len(ddp) == len(single) == STEPS_IN_EPOCH
    assert [d["train/tokens_trained"] for d in ddp] == [s["train/tokens_trained"] for s in single]
    ddp_adapter = load_file(ddp_dir / "adapter" / "adapter_model.safetensors")
    single_adapter = load_file(single_dir / "adapter" / "adapter_model.safetensors")
    for key in single_adapter:
        torch.testing.assert_close(ddp_adapter[key], single_adapter[key], rtol=0, atol=1e-5, msg=key)


def test_a_sweep_under_torchrun_runs_every_job_on_both_processes(tmp_path):
    """Each process runs the sweep; rank 0 alone checks and claims the sweep dir (the other would find the
    multirun.yaml rank 0 just wrote, and refuse the sweep as an earlier one)."""
    sweep_dir = tmp_path / "sweep"
    torchrun("-m", "hardware=ddp_cpu", *EPOCH, "optimizer.lr=0.5,1.0", f"hydra.sweep.dir={sweep_dir}")
    summaries = [json.loads((sweep_dir / str(job) / "summary.json").read_text()) for job in (0, 1)]
    assert [s["world_size"] for s in summaries] == [2, 2]
    assert [s["steps"] for s in summaries] == [STEPS_IN_EPOCH, STEPS_IN_EPOCH]
    assert summaries[0]["train_loss_last"] != summaries[1]["train_loss_last"]  # two learning rates
