"""GRPO learns from its reward, and only from its reward: the tiny model on a task with checkable answers.

The task: two questions ("sun", "sea"), each with its own answer ("1", "2"). SFT first teaches the answer
format with answers drawn at random (as HuatuoGPT-o1 does SFT before RL), so the policy starts at chance and
its completions are scorable; GRPO from that adapter then gets the right answer's reward. The control runs
the same GRPO with a reward for an answer drawn at random each step: same scorer, same scale, no information
about the right answer. Accuracy is the greedy answers' on held-out problems (``val/accuracy``), judged
against the true answers in both runs.

The tiny model is random: its output layer takes a LoRA too (``lm_head``), or no adapter could make its
next-token distributions sharp enough to answer in a few dozen steps.
"""

from __future__ import annotations

import json
import random

import pytest

from medllm.runs.layout import RunDir
from tests.helpers.cli import train_py

ANSWERS = {"sun": "1", "sea": "2"}
CHOICES = ["1", "2", "3", "4"]
TARGETS = "model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head]"


def _problems(path):
    rows = [
        {"id": f"p{i}", "Open-ended Verifiable Question": question, "Ground-True Answer": answer}
        for i in range(48)
        for question, answer in [list(ANSWERS.items())[i % 2]]
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def formatted(tmp_path_factory):
    """An SFT adapter that answers in the task's format, with answers drawn at random (chance accuracy)."""
    root = tmp_path_factory.mktemp("grpo_learns")
    rng = random.Random(0)
    rows = [
        {"Question": question, "Complex_CoT": "ok", "Response": f"The answer is {rng.choice(CHOICES)}."}
        for question in ANSWERS
        for _ in range(16)
    ]
    (root / "sft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    train_py(
        "experiment=smoke",
        "data=local",
        f"data.path={root / 'sft.jsonl'}",
        "data.val_size=2",
        "data.batch_size=8",
        "max_seq_length=128",
        TARGETS,
        "optimizer.lr=3e-2",
        "trainer.max_steps=60",
        "trainer.val_check_interval=60",
        "callbacks.checkpoint.every_n_train_steps=0",
        f"hydra.run.dir={root / 'sft'}",
    )
    return root


def _grpo(root, name, *overrides):
    train_py(
        "experiment=grpo_smoke",
        f"data.path={_problems(root / 'problems.jsonl')}",
        f"init_adapter={root / 'sft' / 'adapter'}",
        TARGETS,
        "max_seq_length=128",
        "data.batch_size=16",
        "data.val_size=16",
        "stage.num_generations=4",
        "stage.max_completion_length=16",
        "optimizer.lr=5e-3",
        "scheduler.num_warmup_steps=0",
        "trainer.max_steps=24",
        "trainer.val_check_interval=12",
        "callbacks.checkpoint.every_n_train_steps=0",
        f"hydra.run.dir={root / name}",
        *overrides,
    )
    return RunDir(root / name).read_summary()


def test_grpo_goes_from_chance_to_the_right_answers(formatted):
    learned = _grpo(formatted, "grpo")
    assert learned["val_accuracy"] >= 0.9, learned


def test_grpo_with_an_uninformative_reward_stays_at_chance(formatted):
    control = _grpo(
        formatted,
        "control",
        "stage.rewards.correctness.fn._target_=tests.helpers.rewards.random_answer_correctness",
        f"+stage.rewards.correctness.fn.answers=[{','.join(CHOICES)}]",
    )
    assert control["val_accuracy"] < 0.9, control
