"""W&B: offline without an API key, the logged keys, the samples table, secrets kept out of the run's files.

train.py runs with no W&B environment and HOME in a temporary dir (no netrc, no key): the logger must pick
offline mode by itself. Its run is read back from the ``.wandb`` file, a LevelDB-style log of
protobuf records (wandb 0.31 has no public reader for it). Fast tests of redaction, mode choice and the
sample rows follow.
"""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from peft import get_peft_model

from medllm.config.secrets import REDACTED, is_secret_key, redact_argv, redact_secrets
from medllm.data.datamodule import ReasoningDataModule
from medllm.errors import ConfigError
from medllm.models.lora import LoraSpec
from medllm.models.tiny import tiny_llama
from medllm.training import wandb_logging
from medllm.training.wandb_logging import resolve_mode, sample_rows
from tests.helpers.cli import train_py
from tests.helpers.configs import ROOT
from tests.helpers.extras import needs_wandb

SECRET = "sk-SECRET123"
LOGGED_KEYS = (
    "train/loss", "train/ppl", "train/grad_norm", "train/lr", "val/loss", "val/ppl", "val/token_accuracy",
    "perf/tokens_per_s", "perf/peak_mem_gib",
)  # fmt: skip


def read_wandb_records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` file: a 7-byte header, then 32 KiB blocks of chunks
    (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last), block tails under 7 bytes zeroed."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a .wandb file"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
        if kind in (0, 1, 4):
            pending = b""
    return records


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def train_without_api_key(tmp_path_factory, run_dir: Path, *overrides: str) -> str:
    """train.py with no W&B API key anywhere and no network to reach; its output."""
    home = tmp_path_factory.mktemp("home")  # no ~/.netrc and no W&B settings: no API key anywhere
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith("WANDB_")] + ["NETRC"]:
            patch.delenv(name, raising=False)
        patch.setenv("MPLCONFIGDIR", os.environ.get("MPLCONFIGDIR", str(Path.home() / ".config" / "matplotlib")))
        patch.setenv("HOME", str(home))
        patch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # should anything try to go online, it never gets out
        out = train_py(*overrides, f"hydra.run.dir={run_dir}")
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    """A W&B run of train.py in a process of its own: wandb captures the console (output.log) by patching the
    sys.stdout it finds when first imported, which in a test process is whatever an earlier test left there."""
    run_dir = tmp_path_factory.mktemp("wandb_run")
    home = tmp_path_factory.mktemp("home")  # no ~/.netrc and no W&B settings: no API key anywhere
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env |= {"HOME": str(home), "WANDB_BASE_URL": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}
    env.setdefault("MPLCONFIGDIR", str(Path.home() / ".config" / "matplotlib"))
    args = [
        "experiment=smoke", "logger=wandb", "trainer.max_steps=10", "logger.num_samples=2",
        "logger.sample_max_new_tokens=8", f"+data.hub_token={SECRET}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir, out.stdout + out.stderr


@pytest.mark.slow
@needs_wandb
def test_no_api_key_means_an_offline_run_in_the_run_dir(wandb_run):
    run_dir, output = wandb_run
    assert "W&B: offline mode (no API key" in output
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert not list((run_dir / "wandb").glob("run-*"))  # no online run was attempted


@pytest.mark.slow
@needs_wandb
def test_offline_run_holds_metrics_by_optimizer_step_config_and_samples(wandb_run):
    run_dir, _ = wandb_run
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    records = read_wandb_records(next(offline.glob("*.wandb")))
    kinds = [r.WhichOneof("record_type") for r in records]
    history = [{_key(i): json.loads(i.value_json) for i in r.history.item} for r in records if r.history.item]
    logged = set().union(*history)
    assert set(LOGGED_KEYS) <= logged, set(LOGGED_KEYS) - logged
    # smoke logs every 5 optimizer steps: train rows at steps 5 and 10, once each; validation after step 10.
    assert [row["trainer/global_step"] for row in history if "train/loss" in row] == [5, 10]
    assert {row["trainer/global_step"] for row in history if "val/loss" in row} == {10}
    # The samples table, logged at the validation after step 10, its rows in the run's files.
    (table_row,) = [row for row in history if "val/samples/_type" in row]
    assert table_row["val/samples/_type"] == "table-file" and table_row["trainer/global_step"] == 10
    table = json.loads((offline / "files" / table_row["val/samples/path"]).read_text())
    assert table["columns"] == ["step", "prompt", "generation", "reference"]
    assert len(table["data"]) == 2 and all(row[0] == 10 and row[1] and row[3] for row in table["data"])
    # The resolved config, the injected secret redacted; the run finished (wandb.finish) with success.
    config = {}
    for r in records:
        for item in (r.run.config if r.HasField("run") else r.config).update:
            config[_key(item)] = json.loads(item.value_json)
    assert config["optimizer"]["lr"] == pytest.approx(1e-2)
    assert config["logger"]["project"] == "medllm"
    assert config["data"]["hub_token"] == REDACTED
    assert "exit" in kinds and next(r.exit.exit_code for r in records if r.HasField("exit")) == 0


@pytest.mark.slow
@needs_wandb
def test_secret_is_nowhere_in_the_runs_files(wandb_run):
    run_dir, _ = wandb_run
    files = [p for p in (run_dir / "wandb").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "output.log" for p in files)
    leaking = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaking  # config, command line (wandb-metadata args), console output, debug logs
    assert (run_dir / "csv").exists() is False  # only the W&B logger ran


# ---- fast tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["hf_token", "api_key", "WANDB_API_KEY", "wandbApiKey", "db_password", "client_secret", "auth_header"]
)
def test_secret_looking_keys(name):
    assert is_secret_key(name)


@pytest.mark.parametrize(
    "name", ["num_key_value_heads", "max_new_tokens", "sample_max_new_tokens", "tokenizer", "pad_token", "keys_seen"]
)
def test_ordinary_keys(name):
    assert not is_secret_key(name)


def test_redaction_of_config_values_and_command_line(monkeypatch):
    api_key = "0123456789abcdef" * 2 + "01234567"
    monkeypatch.setenv("WANDB_API_KEY", api_key)
    config = {
        "optimizer": {"lr": 1e-4},
        "data": {"hf_token": "hf_abc", "path": "https://me:pa55word@host/rows.jsonl", "empty_token": None},
        "model": {"num_key_value_heads": 2, "note": f"key {api_key} and {SECRET}"},
        "tags": [SECRET, "r16"],
    }
    redacted = redact_secrets(config)
    assert redacted["optimizer"] == {"lr": 1e-4} and redacted["model"]["num_key_value_heads"] == 2
    assert redacted["data"]["hf_token"] == REDACTED and redacted["data"]["empty_token"] is None
    assert redacted["data"]["path"] == f"https://me:{REDACTED}@host/rows.jsonl"
    assert redacted["model"]["note"] == f"key {REDACTED} and {REDACTED}"
    assert redacted["tags"] == [REDACTED, "r16"]
    assert api_key not in str(redacted) and "pa55word" not in str(redacted)
    argv = redact_argv(["train.py", "+data.hf_token=abc", "optimizer.lr=1e-4", f"logger.notes={api_key}"])
    assert argv == ["train.py", f"+data.hf_token={REDACTED}", "optimizer.lr=1e-4", f"logger.notes={REDACTED}"]


def test_mode_online_with_a_key_offline_without(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_mode(None)[0] == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    assert resolve_mode(None)[0] == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(None)[0] == "disabled"
    assert resolve_mode("offline") == ("offline", "logger.mode")
    with pytest.raises(ConfigError, match="logger.mode"):
        resolve_mode("sometimes")


def test_sample_knobs_are_medllm_s_and_csv_needs_no_callback():
    cfg = OmegaConf.load(ROOT / "conf" / "logger" / "wandb.yaml")
    assert set(wandb_logging.SAMPLE_KNOBS) <= set(cfg)
    (callback,) = wandb_logging.sample_callbacks(OmegaConf.merge(cfg, {"num_samples": 3}))
    assert callback.num_samples == 3
    assert wandb_logging.sample_callbacks(OmegaConf.load(ROOT / "conf" / "logger" / "csv.yaml")) == []


def test_sample_rows_decode_prompts_and_leave_the_model_training(tokenizer, tmp_path):
    data = ReasoningDataModule(tokenizer, val_size=3, cache_dir=os.environ["MEDLLM_CACHE_DIR"], seed=1)
    data.setup("fit")
    model = get_peft_model(tiny_llama(tokenizer, seed=0), LoraSpec(r=4, alpha=8).peft_config()).train()
    rng = torch.get_rng_state()
    rows = sample_rows(model, tokenizer, data.splits["val"], num_samples=2, max_new_tokens=4)
    assert model.training and torch.equal(torch.get_rng_state(), rng)  # training's mode and random stream kept
    assert len(rows) == 2
    for prompt, generation, reference in rows:
        assert prompt and "<｜Assistant｜>" not in prompt and isinstance(generation, str)
        assert not reference.startswith("<think>") and "</think>" in reference


@pytest.mark.slow
@needs_wandb
def test_many_loggers_csv_and_wandb_both_get_every_row(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("many_loggers")
    train_without_api_key(
        tmp_path_factory, run_dir, "experiment=smoke", "logger=many", "trainer.max_steps=10",
        "logger.wandb.num_samples=2", "logger.wandb.sample_max_new_tokens=8",
    )  # fmt: skip
    with (run_dir / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    # Sets: the validation after fit logs step 10 again (a second CSV row; W&B merges rows of one step).
    csv_steps = {key: {int(r["step"]) for r in rows if r.get(key)} for key in ("train/loss", "val/loss")}
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    records = read_wandb_records(next(offline.glob("*.wandb")))
    history = [{_key(i): json.loads(i.value_json) for i in r.history.item} for r in records if r.history.item]
    wandb_steps = {key: {row["trainer/global_step"] for row in history if key in row} for key in csv_steps}
    # smoke logs every 5 optimizer steps: train rows at 5 and 10; validation after step 10.
    assert csv_steps == wandb_steps == {"train/loss": {5, 10}, "val/loss": {10}}
    csv_losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert csv_losses == pytest.approx([row["train/loss"] for row in history if "train/loss" in row])
    assert any("val/samples/_type" in row for row in history)  # W&B's samples table, in a list of loggers too
    config = {}  # the second logger gets the run's config and data summary too
    for r in records:
        for item in (r.run.config if r.HasField("run") else r.config).update:
            config[_key(item)] = json.loads(item.value_json)
    assert config["optimizer"]["lr"] == pytest.approx(1e-2)
    assert any(key.startswith("data/") for row in history for key in row)


@pytest.mark.slow
@needs_wandb
def test_grpo_logs_rewards_by_function_and_a_table_of_sampled_completions(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("grpo_wandb")
    train_without_api_key(tmp_path_factory, run_dir, "experiment=grpo_smoke", "logger=wandb", "trainer.max_steps=2")
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    records = read_wandb_records(next(offline.glob("*.wandb")))
    history = [{_key(i): json.loads(i.value_json) for i in r.history.item} for r in records if r.history.item]
    logged = set().union(*history)
    for key in (
        "train/reward", "train/rewards/correctness/mean", "train/rewards/format/mean", "train/accuracy",
        "train/truncated", "train/equal_reward_groups", "perf/rollout_tokens_per_s", "val/accuracy",
    ):  # fmt: skip
        assert key in logged, key
    # grpo_smoke logs its completions every 2 steps: the table of step 2, one row a completion (4 prompts x 4).
    (table_row,) = [row for row in history if "train/completions/_type" in row]
    table = json.loads((offline / "files" / table_row["train/completions/path"]).read_text())
    assert table["columns"] == [
        "step",
        "prompt",
        "completion",
        "correctness",
        "format",
        "reward",
        "advantage",
        "truncated",
    ]
    assert len(table["data"]) == 16 and all(row[0] == 2 for row in table["data"])
