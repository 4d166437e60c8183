"""Config mistakes are caught before any model loads, each with a one-line message naming the key."""

from __future__ import annotations

import functools
import json
import math
import re
import time

import lightning as L
import pytest
import torch
from peft import get_peft_model

from medllm.config.checks import check_train_config
from medllm.data.datamodule import ReasoningDataModule
from medllm.errors import ConfigError, MedllmError
from medllm.models.backends import ModelLoadError
from medllm.models.backends.hf import check_target_modules
from medllm.models.lora import LoraSpec
from medllm.models.tiny import tiny_llama
from medllm.training.module import NonFiniteLossError, ReasoningSFTModule
from tests.helpers.cli import train_py
from tests.helpers.configs import compose_train
from tests.helpers.extras import needs_optuna


def check(tmp_path, *overrides):
    check_train_config(compose_train("experiment=smoke", f"paths.output_dir={tmp_path}", *overrides))


def test_the_smoke_config_passes(tmp_path):
    check(tmp_path)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.lora.r=0", "model.lora.r"),
        ("model.lora.alpha=-4", "model.lora.alpha"),
        ("max_seq_length=0", "max_seq_length"),
        ("data.batch_size=0", "data.batch_size"),
    ],
)
def test_non_positive_values_name_their_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=rf"^{key}=\S+ must be a number > 0"):
        check(tmp_path, override)


@pytest.mark.parametrize("lr", ["-1", "0", "1e12", "2"])
def test_a_learning_rate_outside_0_to_1_is_named(tmp_path, lr):
    """1e12 for 1e-12 trained to a uniform output without a word; every optimizer here diverges above 1."""
    with pytest.raises(ConfigError, match=r"^optimizer.lr=\S+ must be a number in \(0, 1\]"):
        check(tmp_path, f"optimizer.lr={lr}")


@pytest.mark.parametrize("devices", ["1.5", "0", "true", "[0,1.5]", "[-1]", "gpu"])
def test_devices_must_be_whole_numbers_or_auto(tmp_path, devices):
    with pytest.raises(ConfigError, match=r"^trainer.devices=.+ must be a whole number >= 1, -1 \(all\), auto"):
        check(tmp_path, f"trainer.devices={devices}")


@pytest.mark.parametrize("devices", ["1", "-1", "auto", "[0]", "[0,1]"])
def test_devices_that_lightning_takes_pass(tmp_path, devices):
    check(tmp_path, f"trainer.devices={devices}")


def test_local_data_without_a_path_or_with_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="data=local needs data.path"):
        check(tmp_path, "data=local")
    with pytest.raises(ConfigError, match="no such file"):
        check(tmp_path, "data=local", f"data.path={tmp_path / 'absent.jsonl'}")
    with pytest.raises(ConfigError, match=r"^data.path=.+ is a folder; data.path takes one file of rows\.$"):
        check(tmp_path, "data=local", f"data.path={tmp_path}")


def test_gpu_asked_for_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu but no CUDA GPU is visible; use hardware=cpu"):
        check(tmp_path, "hardware=gpu")


def test_bf16_on_a_gpu_without_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ConfigError, match="trainer.precision=bf16-mixed but this GPU has no bfloat16"):
        check(tmp_path, "hardware=gpu")


def test_bf16_true_with_a_4bit_base(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    with pytest.raises(ConfigError, match="bf16-true casts and breaks the 4-bit base"):
        check(tmp_path, "experiment=qlora_r16", "trainer.precision=bf16-true")


def test_output_dir_not_writable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="paths.output_dir=.* is not writable"):
        check_train_config(compose_train("experiment=smoke", f"paths.output_dir={blocker / 'run'}"))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path=.*no such checkpoint"):
        check(tmp_path, f"ckpt_path={tmp_path / 'nope.ckpt'}")


def test_unknown_lora_target_lists_the_modules_there_are(tokenizer):
    with pytest.raises(ModelLoadError, match=r"\['qkv_proj'\].*Its linear layers are: .*'q_proj'"):
        check_target_modules(tiny_llama(tokenizer), ["q_proj", "qkv_proj"])


def run_cli(*overrides):
    start = time.monotonic()
    out = train_py("experiment=smoke", *overrides, check=False)
    return out, time.monotonic() - start


def test_cli_negative_lr_exits_within_seconds_naming_the_key(tmp_path):
    out, seconds = run_cli("optimizer.lr=-1", f"hydra.run.dir={tmp_path}")
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith("error: optimizer.lr=-1")
    assert "Traceback" not in out.stderr
    assert seconds < 60  # the model never loads (most of this is Python imports on a slow machine)


@pytest.mark.parametrize(
    "deleted",
    [
        "~optimizer.lr",  # would train at torch's own lr 1e-3, silently
        "~model.lora.dropout",  # would fail with a traceback once the model is built
        "~trainer.max_epochs",  # would run Lightning's own default
        "~callbacks.checkpoint.every_n_train_steps",  # would stop saving step checkpoints
        "~scheduler",
    ],
)
def test_deleting_a_setting_the_run_needs_is_refused(tmp_path, deleted):
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(deleted)} deletes a setting the run needs.+Set {deleted[1:]}="
    ):
        check(tmp_path, deleted)


def test_deleting_a_group_whose_settings_the_run_needs_is_refused(tmp_path):
    # without one, Lightning's own accelerator, devices and 32-bit precision would train
    with pytest.raises(ConfigError, match=r"^~hardware removes the hardware group.+\(hardware=<option>\)"):
        check(tmp_path, "~hardware")


@pytest.mark.parametrize(
    "overrides",
    [("~logger",), ("~callbacks.preemption",), ("logger=many", "~logger.wandb"), ("~hparams_search",)],
)
def test_deleting_what_the_run_can_do_without_passes(tmp_path, overrides):
    check(tmp_path, *overrides)


def test_cli_deleted_setting_exits_before_training(tmp_path):
    out, _ = run_cli("~optimizer.lr", f"hydra.run.dir={tmp_path}")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: ~optimizer.lr deletes a setting")
    assert not (tmp_path / "summary.json").exists()


def test_cli_unknown_option_is_named(tmp_path):
    out, _ = run_cli("trainer.max_stepz=3", f"hydra.run.dir={tmp_path}")
    assert out.returncode != 0 and "max_stepz" in out.stderr and "not in struct" in out.stderr


class NanLoss(torch.nn.Module):
    """Wraps a model; its loss is nan on forward passes ``first`` to ``last`` (1-based)."""

    def __init__(self, model, first: int, last: int = 10**9):
        super().__init__()
        self.model, self.first, self.last, self.calls = model, first, last, 0

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        self.calls += 1
        if self.first <= self.calls <= self.last:
            out.loss = out.loss * float("nan")
        return out


def fit_with_nan(tokenizer, tmp_path, skip: int, fused: bool, first: int = 4, last: int = 10**9):
    """fused: torch's fused AdamW, which skips a bad update on the device and is checked a step later."""
    data = ReasoningDataModule(tokenizer, batch_size=4, val_size=2, cache_dir=str(tmp_path / "cache"))
    model = NanLoss(get_peft_model(tiny_llama(tokenizer), LoraSpec(r=4, alpha=8).peft_config()), first, last)
    module = ReasoningSFTModule(
        model, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, fused=fused), skip_nonfinite_steps=skip
    )
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    return trainer, module, model


@pytest.mark.parametrize("fused", [False, True])
def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tokenizer, tmp_path, fused):
    with pytest.raises(NonFiniteLossError, match="non-finite .* at step 4"):
        fit_with_nan(tokenizer, tmp_path, skip=0, fused=fused)
    saved = sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt"))
    # Stepped without waiting for the loss, step 4 ran (updating nothing) and was saved before the check.
    last_saved = 4 if fused else 3
    assert saved == [f"epoch=0-step={k}.ckpt" for k in range(1, last_saved + 1)]
    states = [torch.load(tmp_path / "ckpt" / name, weights_only=False)["state_dict"] for name in saved]
    assert states[-1] and all(torch.isfinite(v).all() for v in states[-1].values())
    if fused:  # the bad step changed no weight
        assert all(torch.equal(states[-1][k], states[-2][k]) for k in states[-1])


@pytest.mark.parametrize("fused", [False, True])
def test_nonfinite_steps_can_be_skipped_up_to_a_limit(tokenizer, tmp_path, fused):
    trainer, module, model = fit_with_nan(tokenizer, tmp_path / "a", skip=2, fused=fused, first=4, last=5)
    # A skipped step is still a step (no update; the schedule moves on), as under AMP's gradient scaler.
    assert trainer.global_step == 6 and module.nonfinite_steps_skipped == 2 and model.calls == 6
    assert module.last_train_loss is not None and math.isfinite(module.last_train_loss)
    with pytest.raises(NonFiniteLossError, match="at step 6"):  # a third bad step is one too many
        fit_with_nan(tokenizer, tmp_path / "b", skip=2, fused=fused, first=4, last=6)


def test_gpu_out_of_memory_is_re_raised_with_advice(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from medllm.errors import MedllmError
    from medllm.training.fit import train
    from tests.helpers.configs import CONF

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(L.Trainer, "fit", out_of_memory)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=smoke", f"paths.output_dir={tmp_path}"])
    with pytest.raises(MedllmError, match="ran out of memory.*data.batch_size.*max_seq_length.*gradient_checkpointing"):
        train(cfg)


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        (
            {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"},
            ("trainer.num_nodes=1",),
            "trainer.num_nodes=1 but 2 node(s) started by torchrun (WORLD_SIZE / LOCAL_WORLD_SIZE)",
        ),
        (
            {"SLURM_NTASKS": "16", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "8(x2)"},
            ("trainer.devices=4", "trainer.num_nodes=1"),
            "trainer.num_nodes=1 but 2 node(s) and trainer.devices=4 but 8 process(es) a node started by srun",
        ),
        # Lightning resolves these by the devices it sees (1 CPU), not the processes torchrun started.
        (
            {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"},
            ("trainer.devices=auto",),
            "trainer.devices=auto but 2 process(es) a node started by torchrun",
        ),
        ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, ("trainer.devices=-1",), "trainer.devices=-1 but 2 process(es)"),
    ],
    ids=["torchrun-nodes", "srun-both", "torchrun-auto", "torchrun-all"],
)
def test_nodes_and_devices_that_disagree_with_the_launcher_are_named(tmp_path, monkeypatch, env, overrides, message):
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS", "SLURM_NNODES", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    check(tmp_path, "hardware=ddp_cpu")  # the launcher's numbers, followed
    with pytest.raises(ConfigError) as err:
        check(tmp_path, "hardware=ddp_cpu", *overrides)
    assert str(err.value).startswith(message)


def test_several_nodes_without_a_launcher_are_refused_instead_of_waiting_forever(tmp_path, monkeypatch):
    """Plain ``python train.py trainer.num_nodes=2`` would wait at "Initializing distributed" for a node that no
    launcher starts; one process of several devices is Lightning's to start, and passes."""
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS", "SLURM_NNODES", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    check(tmp_path, "hardware=ddp_cpu", "trainer.devices=2")
    with pytest.raises(
        ConfigError, match=r"^trainer.num_nodes=2 needs a launcher .* wait forever .* torchrun --nnodes 2"
    ):
        check(tmp_path, "hardware=ddp_cpu", "trainer.num_nodes=2")


@pytest.mark.parametrize("value", ["", "onlne", "Offline"])
def test_a_wandb_mode_in_the_environment_that_wandb_would_refuse_is_named_first(tmp_path, monkeypatch, value):
    """An empty WANDB_MODE= ended in wandb's pydantic traceback after the data was prepared."""
    monkeypatch.setenv("WANDB_MODE", value)
    with pytest.raises(ConfigError, match=rf"^WANDB_MODE='{value}' \(in the environment\) must be online"):
        check(tmp_path, "logger=wandb")
    check(tmp_path, "logger=csv")  # no W&B logger: W&B never reads it
    monkeypatch.setenv("WANDB_MODE", "offline")
    check(tmp_path, "logger=wandb")


@pytest.mark.parametrize("cap", ["24GB", "-1", "inf"])
def test_a_bad_memory_cap_fails_with_the_config_not_when_the_model_loads(tmp_path, monkeypatch, cap):
    monkeypatch.setenv("MEDLLM_MEMORY_CAP_GIB", cap)
    with pytest.raises(MedllmError, match=rf"MEDLLM_MEMORY_CAP_GIB='{cap}' must be a positive number of GiB"):
        check(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("+logger.csv.nmae=x",), "unknown key logger.csv.nmae; did you mean logger.csv.name?"),
        (("logger.wandb.mode=onlin",), "logger.wandb.mode=onlin must be one of online | offline | disabled"),
        (("~logger.wandb", "logger.csv.version=[1]"), "logger.csv.version=[1] must be"),
    ],
)
def test_each_logger_of_logger_many_is_checked_by_its_own_schema(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check(tmp_path, "logger=many", *overrides)


def test_logger_many_as_composed_passes(tmp_path):
    check(tmp_path, "logger=many")


@needs_optuna
def test_a_sweep_on_validation_loss_without_validation_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="optimized_metric=val_loss needs validation"):
        check(tmp_path, "hparams_search=optuna", "trainer.limit_val_batches=0")


@needs_optuna
def test_an_eval_metric_to_optimize_needs_an_evaluation_after_training(tmp_path):
    with pytest.raises(ConfigError, match="optimized_metric=eval_accuracy is a score of an evaluation after training"):
        check(tmp_path, "hparams_search=optuna", "optimized_metric=eval_accuracy", "hydra.sweeper.direction=maximize")


def test_a_mistake_in_the_evaluation_after_training_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="^eval_after_training: .*pubmedq"):
        check(tmp_path, 'eval_after_training=["benchmark=pubmedq"]')
    with pytest.raises(ConfigError, match="^eval_after_training: .*benchmark=mcq needs benchmark.path"):
        check(tmp_path, 'eval_after_training=["benchmark=mcq"]')


@needs_optuna
def test_a_sweep_must_maximize_a_score_and_minimize_a_loss(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "Yes?", "options": ["yes", "no"], "answer": "A"}) + "\n")
    after = f'eval_after_training=["benchmark=mcq","benchmark.path={questions}"]'
    with pytest.raises(ConfigError, match="set hydra.sweeper.direction=maximize"):
        check(tmp_path, "hparams_search=optuna", "optimized_metric=eval_accuracy", after)
    maximize = "hydra.sweeper.direction=maximize"
    check(tmp_path, "hparams_search=optuna", "optimized_metric=eval_accuracy", after, maximize)
    with pytest.raises(ConfigError, match="set hydra.sweeper.direction=minimize"):
        check(tmp_path, "hparams_search=optuna", "hydra.sweeper.direction=maximize")  # val_loss


def test_the_evaluations_items_are_read_before_training(tmp_path):
    from medllm.workflows.inputs import check_inputs

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "Yes?", "answer": "A"}) + "\n")  # no options
    after = f'eval_after_training=["benchmark=mcq","benchmark.path={questions}"]'
    check(tmp_path, after)  # the config is right; its file is not
    with pytest.raises(ConfigError, match=rf"^eval_after_training: {questions}: row 1: field 'options' is missing"):
        check_inputs(compose_train("experiment=smoke", f"paths.output_dir={tmp_path}", after))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.load_in_4bit=true"], r"^model.load_in_4bit=true, but model.backend=tiny builds its model in float32"),
        pytest.param(
            ["model.attn_implementation=flash_attention_2"],
            r"^model.attn_implementation=flash_attention_2 needs the flash-attn package",
            marks=pytest.mark.skipif(
                __import__("importlib").util.find_spec("flash_attn") is not None, reason="flash-attn is installed"
            ),
        ),
    ],
    ids=["4bit-on-tiny", "flash-attn-missing"],
)
def test_model_settings_the_model_would_not_honour_are_refused(tmp_path, overrides, message):
    cfg = compose_train("experiment=smoke", *overrides, f"paths.output_dir={tmp_path}")
    with pytest.raises(ConfigError, match=message):
        check_train_config(cfg)


def test_a_run_dir_that_is_a_file_is_named_in_one_line(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    out = train_py("experiment=smoke", f"hydra.run.dir={tmp_path / 'taken'}", check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == f"error: hydra.run.dir={tmp_path / 'taken'} is a file; give a " + (
        "folder (new, or one to resume in)."
    )


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_strategies_that_start_processes_which_return_nothing_are_refused(tmp_path, strategy):
    """ddp_spawn trained to the end, then failed saving: no adapter, no summary."""
    with pytest.raises(ConfigError, match=rf"trainer.strategy={strategy} is not supported.*torchrun"):
        check(tmp_path, "hardware=ddp_cpu", f"trainer.strategy={strategy}")


def test_a_ddp_run_without_a_launcher_says_it_trains_in_one_process(tmp_path, monkeypatch, caplog):
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS", "SLURM_NNODES", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level("WARNING", logger="medllm.config.checks"):
        check(tmp_path, "hardware=ddp_cpu")
    assert "a DDP run with no torchrun or srun to start its processes trains in one" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="medllm.config.checks"):
        check(tmp_path)  # no DDP: nothing to say
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        check(tmp_path, "hardware=ddp_cpu")  # torchrun started 2
    assert "no torchrun" not in caplog.text
