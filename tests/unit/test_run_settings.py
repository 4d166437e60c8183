"""The run record an adapter carries, and eval.py taking its settings from it (in-process, real configs and data)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from medllm.config.checks import check_eval_config
from medllm.config.secrets import REDACTED
from medllm.data.chat_format import R1ChatFormat
from medllm.data.fingerprint import split_fingerprint, splits_fingerprint
from medllm.errors import ConfigError
from medllm.evaluation.run_settings import (
    EVAL_OWN,
    TAKEN,
    check_held_out,
    check_prompt,
    run_records,
    take_run_settings,
)
from medllm.models.tiny import tiny_tokenizer
from medllm.runs.record import RECORD_FILE, RunRecord, RunRecordError
from tests.helpers.adapters import mark_adapter
from tests.helpers.configs import compose_eval, compose_train

# A run that differs from eval.yaml's defaults in every setting eval.py takes.
RUN = ("max_seq_length=256", "model.tiny.hidden_size=48", "seed=7", "data.instruction=Name the specialist.")


def fake_adapter(folder: Path, *overrides: str) -> tuple[Path, RunRecord]:
    """An adapter folder with the record train.py writes for a run of ``overrides`` (the weights are not needed
    here: eval.py reads the record before any model loads)."""
    composed = compose_train(*overrides, f"paths.output_dir={folder.parent}")
    cfg = OmegaConf.masked_copy(composed, [key for key in composed if key != "hydra"])  # as train.py gets it
    tokenizer = tiny_tokenizer(cfg.model.tiny.vocab_size)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup("fit")
    folder.mkdir(parents=True)
    mark_adapter(folder)  # eval reads the record before any weight
    RunRecord.of_config(cfg).with_data(datamodule.chat_format.record(), splits_fingerprint(datamodule.splits)).write(
        folder
    )
    return folder, RunRecord.read(folder)


def taken(adapter: Path, *overrides: str, tmp_path: Path):
    """The eval config composed from ``overrides``, filled from the adapter's run as eval.py does."""
    overrides = (f"adapter_path={adapter}", "benchmark=mcq", "benchmark.path=x", *overrides)
    cfg = compose_eval(*overrides, f"paths.output_dir={tmp_path}")
    take_run_settings(cfg, overrides)
    return cfg


def flat(value, prefix: str) -> dict:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}.{key}").items()}
    return {prefix: value}


def owned(key: str) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in EVAL_OWN)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> tuple[Path, RunRecord]:
    return fake_adapter(tmp_path_factory.mktemp("run") / "adapter", *RUN)


# ---------------------------------------------------------------------------------------------- the record


def test_the_record_holds_config_chat_format_and_split(adapter):
    _, record = adapter
    assert record.config["model"]["tiny"]["hidden_size"] == 48 and record.config["max_seq_length"] == 256
    fmt = R1ChatFormat(instruction="Name the specialist.")
    assert record.chat_format["generation_prompt"] == fmt.generation_prompt("{question}")
    assert record.chat_format["completion"] == fmt.completion("{reasoning}", "{response}")
    split = record.data_split
    assert split["val"]["rows"] > 0 and split["train"]["rows"] > split["val"]["rows"]
    assert split["train"]["digest"] != split["val"]["digest"]


def test_the_split_fingerprint_follows_the_rows_not_their_order(tokenizer):
    cfg = compose_train("paths.output_dir=.")
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup("fit")
    val = datamodule.splits["val"]
    assert split_fingerprint(val.select(range(len(val) - 1, -1, -1))) == split_fingerprint(val)
    assert split_fingerprint(val.select(range(len(val) - 1)))["digest"] != split_fingerprint(val)["digest"]
    changed = val.map(lambda row, i: {"input_ids": [*row["input_ids"][:-1], 0]} if i == 0 else row, with_indices=True)
    assert split_fingerprint(changed)["digest"] != split_fingerprint(val)["digest"]


def test_a_damaged_record_is_named(tmp_path):
    (tmp_path / RECORD_FILE).write_text("{truncated")
    with pytest.raises(RunRecordError, match=f"{tmp_path / RECORD_FILE}: not a readable run record"):
        RunRecord.read(tmp_path)
    assert RunRecord.read(tmp_path / "nothing here") is None


# ---------------------------------------------------------------------------------------------- taking settings


def test_eval_takes_every_setting_of_the_run_the_command_line_leaves(adapter, tmp_path):
    folder, record = adapter
    composed = compose_eval(f"paths.output_dir={tmp_path}")
    cfg = taken(folder, tmp_path=tmp_path)
    with open_dict(cfg):
        cfg.benchmark.path = str(folder)  # any existing file or folder
    check_eval_config(cfg)  # still a valid eval config
    ran = {k: v for name in TAKEN for k, v in flat(record.config[name], name).items()}
    resolved = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [*TAKEN, "paths"]), resolve=True)
    now = {k: v for name in TAKEN for k, v in flat(resolved[name], name).items()}
    assert {k: v for k, v in ran.items() if not owned(k)} == {k: v for k, v in now.items() if not owned(k)}
    assert cfg.data.cache_dir == composed.data.cache_dir  # this machine's, not the run's
    assert cfg.benchmark.instruction == "Name the specialist."  # the prompt follows the run's data
    assert (cfg.model.max_seq_length, cfg.data.seed) == (256, 7)


def test_given_settings_that_agree_or_change_no_score_are_applied(adapter, tmp_path):
    folder, _ = adapter
    given = ("max_seq_length=256", "seed=3", "model.attn_implementation=eager", "data.batch_size=2")
    cfg = taken(folder, *given, tmp_path=tmp_path)
    assert (cfg.seed, cfg.model.attn_implementation, cfg.data.batch_size) == (3, "eager", 2)
    assert cfg.data.seed == 7  # a new seed draws another subsample, never another validation split


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["max_seq_length=512"], "max_seq_length: the run's 256, given 512\\); leave out max_seq_length:"),
        (["model.tiny.hidden_size=64"], "model.tiny.hidden_size: the run's 48, given 64"),
        (["model=tiny_llama"], "model.tiny.hidden_size: the run's 48, given 64\\); leave out model:"),
        (["model=r1_distill_llama_8b"], "model.name_or_path: the run's null, given unsloth/DeepSeek-R1-Distill"),
        (["data.val_size=3"], "data.val_size: the run's 0.2, given 3"),
        (["data=local", "data.path=rows.jsonl"], "data.path: the run's null, given rows.jsonl"),
    ],
)
def test_given_settings_that_contradict_the_run_are_refused(adapter, overrides, message, tmp_path):
    folder, _ = adapter
    with pytest.raises(ConfigError, match=f"contradicts the run that trained {folder} .*{message}") as err:
        taken(folder, *overrides, tmp_path=tmp_path)
    assert "\n" not in str(err.value) and str(folder / RECORD_FILE) in str(err.value)


def test_adapters_without_a_record_leave_the_config_as_composed(tmp_path):
    folder = tmp_path / "hand-made"
    folder.mkdir()
    mark_adapter(folder)  # eval reads the record before any weight
    cfg = taken(folder, tmp_path=tmp_path)
    composed = compose_eval(
        f"adapter_path={folder}", "benchmark=mcq", "benchmark.path=x", f"paths.output_dir={tmp_path}"
    )
    # As written, unresolved: comparing DictConfigs would resolve ${now:...} twice, a second apart at times.
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(composed)


def test_adapters_scored_together_must_share_base_and_prompt(adapter, tmp_path):
    folder, _ = adapter
    sweep_job, _ = fake_adapter(tmp_path / "rank16" / "adapter", *RUN, "model.lora.r=16", "optimizer.lr=1e-3")
    cfg = taken(folder, f"adapters=[{sweep_job}]", tmp_path=tmp_path)  # a sweep: other rank and lr, one base
    assert cfg.model.tiny.hidden_size == 48

    other_base, _ = fake_adapter(tmp_path / "other" / "adapter", *RUN[:-1], "model.tiny.hidden_size=32")
    differences = "data.instruction: Name the specialist. vs null; model.tiny.hidden_size: 48 vs 32"
    with pytest.raises(ConfigError, match=f"{folder} and {other_base} were trained .*{differences}"):
        taken(folder, f"adapters=[{other_base}]", tmp_path=tmp_path)


def test_adapters_of_other_splits_share_a_benchmark_but_not_held_out_loss(adapter, tmp_path):
    folder, _ = adapter
    other_split, _ = fake_adapter(tmp_path / "split" / "adapter", *RUN, "data.val_size=5")
    taken(folder, f"adapters=[{other_split}]", tmp_path=tmp_path)
    overrides = (f"adapter_path={folder}", f"adapters=[{other_split}]", "benchmark=medical_o1_val")
    cfg = compose_eval(*overrides, f"paths.output_dir={tmp_path}")
    with pytest.raises(ConfigError, match="data.val_size: 0.2 vs 5.*one validation split"):
        take_run_settings(cfg, overrides)


# ---------------------------------------------------------------------------------------------- checks at scoring


def test_held_out_rows_must_be_the_runs(adapter, tmp_path):
    folder, _ = adapter
    cfg = taken(folder, tmp_path=tmp_path)
    datamodule = instantiate(cfg.data, tokenizer=tiny_tokenizer())
    datamodule.setup("fit")
    records = run_records([str(folder)])
    check_held_out(datamodule.splits["val"], records)  # the same rows: passes
    with pytest.raises(ConfigError, match=f"differ from those the run of {folder} held out"):
        check_held_out(datamodule.splits["train"], records)


def test_a_prompt_other_than_the_trained_one_is_warned_about(adapter, caplog):
    folder, _ = adapter
    records = run_records([str(folder)])
    with caplog.at_level(logging.WARNING):
        check_prompt(R1ChatFormat(instruction="Name the specialist."), records)
        assert not caplog.records
        check_prompt(R1ChatFormat(instruction=None), records)
    assert "its scores measure another prompt" in caplog.text and str(folder) in caplog.text


def test_a_redacted_value_of_the_run_is_never_taken_back(tmp_path):
    """A secret is masked in the record: eval uses this machine's value, never the mask."""
    adapter, record = fake_adapter(tmp_path / "run" / "adapter", "+data.hub_token=hf_" + "x" * 30)
    assert record.config["data"]["hub_token"] == REDACTED
    assert taken(adapter, tmp_path=tmp_path).data.get("hub_token") is None
    assert taken(adapter, "+data.hub_token=hf_mine", tmp_path=tmp_path).data.hub_token == "hf_mine"
