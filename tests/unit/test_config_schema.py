"""The config schema: every mistake in train.yaml / eval.yaml keys is one line naming the key, in seconds."""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import sys

import pytest
import torch

from medllm.config import schema
from medllm.config.checks import check_eval_config, check_train_config
from medllm.errors import ConfigError
from tests.helpers.configs import ROOT, compose_train


def check_train(tmp_path, *overrides):
    check_train_config(compose_train("experiment=smoke", f"paths.output_dir={tmp_path}", *overrides))


def check_eval(tmp_path, *overrides):
    check_eval_config(compose_train(f"paths.output_dir={tmp_path}", *overrides, config_name="eval"))


VAL_SIZE_TAIL = " or a whole count >= 1 (a float is a fraction: for 1 row(s) write 1, not 1.0)."


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.max_steps=-5"], "trainer.max_steps=-5 must be a number >= 1, or -1 (run max_epochs instead)."),
        (["+optimizer.lrr=1e-4"], "unknown key optimizer.lrr; did you mean optimizer.lr?"),
        (["+trainer.max_stepz=3"], "unknown key trainer.max_stepz; did you mean trainer.max_steps?"),
        (
            ["+callbacks.checkpoint.every_n_train_step=5"],
            "unknown key callbacks.checkpoint.every_n_train_step; "
            "did you mean callbacks.checkpoint.every_n_train_steps?",
        ),
        (["+model.lora.rank=4"], "unknown key model.lora.rank; model.lora takes r, alpha, dropout,"),
        (["scheduler=linear", "+scheduler.num_cycles=2"], "unknown key scheduler.num_cycles; scheduler takes"),
        (["model.lora.dropout=1.5"], "model.lora.dropout=1.5 must be a number in [0, 1)."),
        (["data.val_size=0"], "data.val_size=0 must be a fraction in (0, 1)" + VAL_SIZE_TAIL),
        (["data.val_size=1.0"], "data.val_size=1.0 must be a fraction in (0, 1)" + VAL_SIZE_TAIL),
        (["seed=abc"], "seed=abc must be an integer."),  # not data.seed, which copies it
        (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1.0 must be a number >= 0."),
        (["optimizer.lr=fast"], "optimizer.lr=fast must be a number."),
        (["model.lora.r=2.5"], "model.lora.r=2.5 must be an integer."),
        (["model.lora.target_modules=q_proj"], "model.lora.target_modules=q_proj must be a list of strings."),
        (["data.source=loca"], "data.source=loca must be one of sample | hub | local; did you mean local?"),
        (["model.backend=unslot"], "model.backend=unslot must be one of hf | tiny | unsloth; did you mean unsloth?"),
        (["model.gradient_checkpointing=yes"], "model.gradient_checkpointing=yes must be one of false | true |"),
        (["trainer.val_check_interval=1.5"], "trainer.val_check_interval=1.5 must be a fraction in (0, 1]"),
        (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 must be a number >= 1."),
        (["optimizer.betas=[0.9]"], "optimizer.betas=[0.9] must be two numbers in [0, 1)."),
        (["logger=wandb", "logger.mode=onlin"], "logger.mode=onlin must be one of online | offline | disabled;"),
        (["trainer.max_steps=-1", "trainer.max_epochs=-1"], "trainer.max_steps=-1 (run max_epochs) needs"),
    ],
)
def test_train_mistakes_are_one_line_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as caught:
        check_train(tmp_path, *overrides)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "overrides",
    [["trainer.max_steps=-1", "trainer.max_epochs=2"], ["trainer.gradient_clip_val=0"], ["data.val_size=3"]],
)
def test_the_edges_of_each_range_pass(tmp_path, overrides):
    check_train(tmp_path, *overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["do_sample=true", "temperature=0"], "temperature=0 must be > 0 with do_sample=true"),
        (["batch_size=0"], "batch_size=0 must be a number >= 1, or auto"),
        (["batch_size=many"], "batch_size=many must be a number >= 1, or auto"),
        (["engine=merge"], "engine=merge must be one of auto | merged | peft; did you mean merged?"),
        (["+temprature=1"], "unknown key temprature; did you mean temperature?"),
        (["seed=abc"], "seed=abc must be an integer."),
        (["benchmark.name=pubmed"], "benchmark.name=pubmed must be one of pubmedqa |"),
        (["benchmark=mcq"], "benchmark=mcq needs benchmark.path="),
        (["benchmark=medmcqa", "benchmark.cop_base=2"], "benchmark.cop_base=2 must be one of 0 | 1."),
        (["+benchmark.cop_base=0"], "unknown key benchmark.cop_base"),  # pubmedqa has no cop_base
        (["mode=chat"], "mode=chat must be one of benchmark | generate."),
        (["mode=generate"], "mode=generate needs a question"),
        (["num_samples=3"], "num_samples=3 needs do_sample=true"),
        (["limit=0"], "limit=0 must be a number > 0."),
        (["top_p=0"], "top_p=0.0 must be a number in (0, 1]."),
        (["max_new_tokens=0"], "max_new_tokens=0 must be a number > 0."),
        (["+model.lora.alhpa=4"], "unknown key model.lora.alhpa; did you mean model.lora.alpha?"),
    ],
)
def test_eval_mistakes_are_one_line_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as caught:
        check_eval(tmp_path, *overrides)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["batch_size=auto"],
        ["engine=merged"],
        ["do_sample=true", "num_samples=5"],
        ["benchmark=medical_o1_val", "++benchmark.path=unused"],  # one sweep over benchmarks shares a path
    ],
)
def test_good_eval_settings_pass(tmp_path, overrides):
    check_eval(tmp_path, *overrides)


def test_a_benchmark_path_that_is_not_there(tmp_path):
    with pytest.raises(ConfigError, match=r"^benchmark.path=.*absent.jsonl: no such file or folder"):
        check_eval(tmp_path, "benchmark=mcq", f"benchmark.path={tmp_path / 'absent.jsonl'}")
    (tmp_path / "q.jsonl").write_text('{"question": "?", "options": ["a", "b"], "answer": "a"}\n')
    check_eval(tmp_path, "benchmark=mcq", f"benchmark.path={tmp_path / 'q.jsonl'}")


def run(script, *overrides, tmp_path):
    """``python <script> <overrides>`` as a user runs it, timing every import (-X importtime)."""
    return subprocess.run(
        [sys.executable, "-X", "importtime", script, *overrides, f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("script", "overrides", "message"),
    [
        ("train.py", ["+optimizer.lrr=1e-4"], "error: unknown key optimizer.lrr; did you mean optimizer.lr?"),
        # The Unsloth recipe: its typo is named before Unsloth (or torch, for the GPU check) is imported.
        ("train.py", ["experiment=qlora_r16", "model.lora.r=0"], "error: model.lora.r=0 must be a number > 0."),
        ("eval.py", ["batch_size=0"], "error: batch_size=0 must be a number >= 1, or auto (chosen to fit)."),
    ],
)
def test_cli_mistakes_fail_before_torch_or_unsloth_is_imported(tmp_path, script, overrides, message):
    out = run(script, *overrides, tmp_path=tmp_path)
    timings = [line for line in out.stderr.splitlines() if line.startswith("import time:")]
    printed = [line for line in out.stderr.splitlines() if not line.startswith("import time:")]
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert printed[-1] == message
    imported = {line.split("|")[-1].strip() for line in timings}
    assert "omegaconf" in imported and not imported & {"torch", "unsloth", "transformers", "peft", "lightning"}


# ---------------------------------------------------------------------------------------------- the schema
# is true to what it describes: its keys are the parameters of the classes and functions the config builds.


def schema_keys(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}


def parameters(fn) -> set[str]:
    return set(inspect.signature(fn).parameters)


def test_the_datamodule_takes_the_data_keys_with_the_schemas_defaults(tokenizer):
    from medllm.data.datamodule import ReasoningDataModule

    assert ReasoningDataModule(tokenizer).settings == schema.Data()
    with pytest.raises(ConfigError, match=r"^unknown key data\.bach_size; did you mean data\.batch_size\?"):
        ReasoningDataModule(tokenizer, bach_size=4)


def test_trainer_keys_are_lightning_trainer_parameters():
    import lightning as L

    assert schema_keys(schema.Trainer) <= parameters(L.Trainer)


@pytest.mark.parametrize("table", ["OPTIMIZERS", "SCHEDULERS", "LOGGERS", "CALLBACKS"])
def test_each_target_schema_names_parameters_of_its_target(table):
    from hydra.utils import get_method

    from medllm.training.wandb_logging import SAMPLE_KNOBS

    for target, cls in getattr(schema, table).items():
        if target.startswith("bitsandbytes"):
            continue  # GPU only; not installed on every machine
        takes = parameters(get_method(target))
        if cls is schema.WandbLogger:  # its other keyword arguments go to wandb.init; medllm takes its own
            takes |= parameters(pytest.importorskip("wandb").init) | set(SAMPLE_KNOBS)
        assert schema_keys(cls) <= takes, target


def test_the_code_accepts_the_schemas_choices_and_refuses_others_by_the_same_rule(tokenizer):
    """The data layer's functions check what they are given with the schema's own rules: one rule, one message."""
    from medllm.data.chat_format import R1ChatFormat
    from medllm.data.prepare import tokenize
    from medllm.data.records import Columns, clean
    from medllm.data.rows import load_valid_rows, row_sources
    from medllm.models.backends.hf import torch_dtype
    from medllm.tasks.benchmarks import LOADERS

    def choices(cls, key):
        return next(f for f in dataclasses.fields(cls) if f.name == key).metadata["rule"].choices

    row = {"Question": "q?", "Complex_CoT": "c.", "Response": "r."}
    rows, _ = clean([row], Columns(), "rows")
    refusals = {
        "train_on": lambda v: R1ChatFormat().tokenize_batch(tokenizer, ["q"], ["c"], ["r"], train_on=v),
        "on_bad_row": lambda v: clean([row], Columns(), "rows", on_bad_row=v),
        "too_long": lambda v: tokenize(rows, tokenizer, R1ChatFormat(), 64, too_long=v),
        "phi_check": lambda v: load_valid_rows(row_sources(schema.Data())[0], Columns(), phi_check=v),
    }
    for key, call in refusals.items():
        for value in choices(schema.Data, key):
            call(value)
        expected = f"data.{key}=nope must be one of {' | '.join(choices(schema.Data, key))}."
        with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
            call("nope")
    for name in choices(schema.Model, "dtype"):
        assert name == "auto" or isinstance(torch_dtype(name), torch.dtype)
    held_out = {name for name, bench in schema.BENCHMARKS.items() if bench.held_out}
    assert held_out == {"medical_o1_val"} and set(schema.BENCHMARKS) == {*LOADERS, *held_out}
