"""The GRPO stage end to end on the tiny model: what a run leaves, exact resume, micro-batches that change
nothing, the KL reference, and eval.py on its adapter."""

from __future__ import annotations

import csv
import json

import pytest
from safetensors.torch import load_file

from medllm.config.schema import STAGE_SUMMARY_METRICS, GRPOStage
from medllm.runs.layout import RunDir
from medllm.tasks.problems import SAMPLE_PROBLEMS
from tests.helpers.adapters import save_adapter
from tests.helpers.cli import eval_py, train_py
from tests.helpers.runs import kill_after_first_checkpoint, torchrun

# grpo_smoke with a reward that tells the random model's completions apart (every step has a gradient),
# 6 steps, a checkpoint every 2.
MOVING = [
    "experiment=grpo_smoke",
    "stage.rewards.correctness.fn._target_=tests.helpers.rewards.text_length",
    "stage.max_completion_length=24",
    "stage.num_generations=3",
    "data.batch_size=2",
    "callbacks.checkpoint.every_n_train_steps=2",
]


def adapter_weights(run_dir):
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys() and a
    for name, value in a.items():
        assert (b[name] - value).abs().max() <= atol, name


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("grpo") / "run"
    train_py("experiment=grpo_smoke", f"hydra.run.dir={run_dir}")
    return run_dir


def test_the_smoke_run_leaves_an_adapter_a_summary_metrics_and_sampled_completions(smoke):
    assert (smoke / "adapter" / "adapter_config.json").is_file()
    summary = RunDir(smoke).read_summary()
    assert summary["steps"] == 6 and summary["rollout_tokens_per_s"] > 0
    assert 0 <= summary["val_accuracy"] <= 1
    # Every name optimized_metric accepts for a GRPO run is a number in its summary.
    assert all(isinstance(summary[name], float) for name in STAGE_SUMMARY_METRICS[GRPOStage._target_])
    with (smoke / "csv" / "metrics.csv").open() as f:
        columns = set(next(csv.reader(f)))
    for name in [
        "train/reward",
        "train/reward_std",
        "train/accuracy",
        "train/completion_length",
        "train/truncated",
        "train/equal_reward_groups",
        "train/rewards/correctness/mean",
        "train/rewards/format/std",
        "perf/rollout_tokens_per_s",
        "perf/step_s",
        "perf/rollout_share",
        "val/accuracy",
        "val/truncated",
    ]:
        assert name in columns, name
    rows = [json.loads(line) for line in (smoke / "completions.jsonl").read_text().splitlines()]
    assert {row["step"] for row in rows} == {2, 4, 6}  # log_completions_every: 2
    assert set(rows[0]) == {"step", "prompt", "completion", "rewards", "reward", "advantage", "truncated"}
    assert set(rows[0]["rewards"]) == {"correctness", "format"}


def test_eval_py_scores_a_grpo_adapter_as_an_sft_one(smoke, tmp_path):
    out = tmp_path / "eval"
    eval_py(
        f"adapter_path={smoke / 'adapter'}",
        "benchmark=mcq",
        f"benchmark.path={SAMPLE_PROBLEMS}",  # the problems it trained on, in the benchmark mcq layout
        "max_new_tokens=8",
        "limit=4",
        f"hydra.run.dir={out}",
    )
    report = json.loads((out / "report.json").read_text())["benchmarks"]["mcq"]
    assert len(report) == 2 and all(model["n"] == 4 for model in report.values())  # the base and the adapter


def test_micro_batches_change_nothing(tmp_path):
    """6 completions a step in one forward pass or in micro-batches of 1 and 4: the same loss, the same adapter."""
    runs = {size: tmp_path / f"micro{size}" for size in (6, 4, 1)}
    for size, run_dir in runs.items():
        train_py(*MOVING, "trainer.max_steps=3", f"stage.micro_batch_size={size}", f"hydra.run.dir={run_dir}")
    whole = adapter_weights(runs[6])
    assert any(value.abs().max() > 0 for name, value in whole.items() if "lora_B" in name)  # it trained
    for size in (4, 1):
        assert_same_weights(whole, adapter_weights(runs[size]))


def test_a_killed_run_resumed_with_ckpt_path_auto_equals_an_uninterrupted_one(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    kill_after_first_checkpoint({"broken": ([*MOVING, f"hydra.run.dir={broken}"], broken / "checkpoints")})
    assert not (broken / "summary.json").exists()
    train_py(*MOVING, f"hydra.run.dir={whole}")
    train_py(*MOVING, f"hydra.run.dir={broken}", "ckpt_path=auto")
    assert_same_weights(adapter_weights(whole), adapter_weights(broken))
    resumed, uninterrupted = RunDir(broken).read_summary(), RunDir(whole).read_summary()
    for key in ("train_loss_first", "train_loss_last", "train_reward_last", "val_reward"):
        assert resumed[key] == pytest.approx(uninterrupted[key], abs=1e-6), key


def test_grpo_from_an_sft_adapter_with_a_kl_penalty_to_it(tmp_path):
    adapter = save_adapter(tmp_path / "sft")  # rank 4
    run_dir = tmp_path / "run"
    train_py(
        *MOVING,
        f"init_adapter={adapter}",
        "model.lora.r=4",
        "model.lora.alpha=8",
        "stage.beta=0.1",
        "scheduler.num_warmup_steps=0",
        "trainer.max_steps=2",
        f"hydra.run.dir={run_dir}",
    )
    with (run_dir / "csv" / "metrics.csv").open() as f:
        kl = [float(row["train/kl"]) for row in csv.DictReader(f) if row.get("train/kl")]
    # The first step's policy is the reference itself: KL 0; after one update it has moved away from it.
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[1] > 0
    start, trained = load_file(adapter / "adapter_model.safetensors"), adapter_weights(run_dir)
    assert start.keys() == trained.keys()
    assert any((trained[name] - value).abs().max() > 0 for name, value in start.items())


def test_grpo_under_ddp_on_two_processes(tmp_path):
    """torchrun, 2 CPU processes (gloo): every process samples its own prompts' completions; the step's loss and
    statistics are over both, the adapter is one, and rank 0 alone writes what the run leaves."""
    run_dir = tmp_path / "ddp"
    torchrun("hardware=ddp_cpu", *MOVING, "trainer.max_steps=2", f"hydra.run.dir={run_dir}")
    summary = RunDir(run_dir).read_summary()
    assert summary["world_size"] == 2 and summary["steps"] == 2
    with (run_dir / "csv" / "metrics.csv").open() as f:
        rows = [row for row in csv.DictReader(f) if row.get("train/reward")]
    assert [int(row["step"]) for row in rows] == [1, 2]  # one row a step: rank 0's, over both processes
    assert all(0 < float(row["train/completion_length"]) <= 24 for row in rows)
    # completions.jsonl: rank 0's own completions of step 2 (2 prompts x 3), written once.
    logged = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [2] * 6
    assert len(list((run_dir / "adapter").glob("adapter_model.safetensors"))) == 1
