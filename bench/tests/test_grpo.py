"""bench/grpo.py's own logic on the CPU: sizes, the summary of timed steps, the table, and the medllm path's
train.py command (composed and checked as train.py would, with the CPU's hardware and model)."""

from __future__ import annotations

import argparse

import pytest

from bench import grpo
from medllm.config.checks import check_train_config
from medllm.tasks.problems import SAMPLE_PROBLEMS
from tests.helpers.configs import compose_train


def test_sizes_are_prompts_times_completions():
    assert grpo.parse_size("8x8") == (8, 8)
    for bad in ("8", "8x1", "x8", "0x8", "8x8x8"):
        with pytest.raises(ValueError, match="must be <prompts>x<completions per prompt>"):
            grpo.parse_size(bad)


def test_summary_and_table_compare_steps_per_second_with_trl():
    trl = grpo.summarize("trl_unsloth", "4x8", [20.0, 22.0, 21.0], [18.0, 19.0, 19.0], [1000, 1000, 1000], peak_gib=9)
    ours = grpo.summarize("medllm", "4x8", [7.0, 7.0, 7.0], [5.0, 5.0, 5.0], [1000, 1000, 1000], peak_gib=20)
    assert trl["step_s"] == 21.0 and trl["generating_share"] == pytest.approx(56 / 63)
    assert ours["rollout_tokens_per_s"] == pytest.approx(200.0)
    untimed = grpo.summarize("trl_unsloth", "8x8", [10.0], [], [1000], peak_gib=None)
    assert untimed["rollout_tokens_per_s"] is None and untimed["generating_share"] is None
    lines = grpo.table([trl, ours, untimed]).splitlines()
    assert "3.00x" in lines[2] and "1.00x" in lines[1] and "?" in lines[3]


def test_the_medllm_path_runs_a_config_train_py_accepts(tmp_path):
    args = argparse.Namespace(
        checkpoint=str(tmp_path / "ckpt"),
        warmup=1,
        steps=2,
        completion=64,
        prompt_limit=256,
        seed=0,
        medllm_override=[],
    )
    problems = tmp_path / "problems.jsonl"
    problems.write_text(SAMPLE_PROBLEMS.read_text("utf-8"))
    command = grpo.medllm_command(args, 4, 8, tmp_path / "run", problems)
    assert command[1].endswith("train.py")
    # On this CPU machine: the CPU's hardware and the tiny model in place of the GPU's and the 8B.
    cpu = ("hardware=cpu", "model=tiny_llama", "model.name_or_path=null", "model.load_in_4bit=false")
    cpu += (f"paths.output_dir={tmp_path}",)
    cfg = compose_train(*command[2:], *cpu)
    check_train_config(cfg)
    assert list(cfg.stage.rewards) == ["length"] and cfg.stage.num_generations == 8 and cfg.data.batch_size == 4
    assert cfg.trainer.max_steps == 3 and cfg.optimizer.lr == grpo.LR


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--sizes", "4"], "--sizes: size '4' must be"), (["--paths", "vllm"], "--paths: unknown path 'vllm'")],
)
def test_a_wrong_flag_is_answered_in_one_line_not_a_traceback(monkeypatch, capsys, argv, message):
    monkeypatch.setattr("sys.argv", ["grpo.py", "--checkpoint", "/nowhere", *argv])
    with pytest.raises(SystemExit) as stop:
        grpo.main()
    assert stop.value.code == 2 and message in capsys.readouterr().err
