"""bench/throughput.py's medllm paths: the train.py commands they build, and the table that sets the peak
train.py estimated beside the one it measured."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig

from bench import harness, throughput
from bench.paths import medllm
from medllm.config.inputs import CAP_VARIABLE
from medllm.config.schema import TrainConfig
from medllm.config.schema_check import validate
from medllm.models.memory import checkpointing_summary, plan_checkpointing
from tests.helpers.configs import compose_train


@pytest.fixture
def checkpoint(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "checkpoint")  # the paths read only the checkpoint's tokenizer
    return tmp_path / "checkpoint"


def commands(
    checkpoint, tmp_path, mode: str = "fixed", names=("medllm", "medllm_auto"), extra=()
) -> dict[str, list[str]]:
    """medllm paths' train.py commands, ``extra`` overrides added; one workdir for all: their rows are the same."""
    settings = harness.Settings(str(checkpoint), mode, batch=8, seq=256, steps=2, warmup=1, seed=0)
    workdir = tmp_path / mode
    workdir.mkdir()
    return {name: throughput.PATHS[name].command(settings, workdir, extra=list(extra)) for name in names}


def test_medical_mode_trains_packed_rows_with_auto_checkpointing(checkpoint, tmp_path):
    argv = commands(checkpoint, tmp_path, "medical")
    auto = argv["medllm_auto"]
    assert auto[:2] == [sys.executable, "train.py"]
    # the same run as medllm's but for the checkpointing setting
    assert len(argv["medllm"]) == len(auto)
    differs = [(a, b) for a, b in zip(argv["medllm"], auto) if a != b]
    assert differs == [("model.gradient_checkpointing=unsloth", "model.gradient_checkpointing=auto")]
    cfg = compose_train(*auto[2:], f"paths.output_dir={tmp_path}")  # real keys, valid values
    validate(cfg, TrainConfig)
    assert cfg.model.gradient_checkpointing == "auto" and cfg.data.packing
    assert cfg.data.batch_size == medllm.MEDICAL_PACKED_BATCH and cfg.max_seq_length == 256
    rows = [json.loads(line) for line in Path(cfg.data.path).read_text().splitlines()]
    assert len(rows) == 2 * (8 * 3 + 8) and all(row["Question"] and row["Complex_CoT"] for row in rows)


def test_fixed_mode_trains_the_unpacked_batch(checkpoint, tmp_path):
    cfg = compose_train(*commands(checkpoint, tmp_path, "fixed")["medllm_auto"][2:])
    assert cfg.model.gradient_checkpointing == "auto" and not cfg.data.packing and cfg.data.batch_size == 8


def test_the_table_sets_a_path_s_estimate_beside_its_measured_peak(tmp_path, monkeypatch):
    monkeypatch.setenv(CAP_VARIABLE, "80")
    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_key_value_heads=8)
    plan = plan_checkpointing("auto", config, 4 * 2048)
    summary = {  # a summary.json as train.py writes it
        "tokens_per_s": 15000.0,
        "trained_tokens_per_s": 14990.0,
        "peak_mem_gib": 0.95 * plan.estimate_gib,
        "steps": 23,
        "train_loss_last": 11.9,
        "gradient_checkpointing": checkpointing_summary(plan, 0.95 * plan.estimate_gib),
    }
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(json.dumps(summary))
    auto = {**medllm.read_summary([], tmp_path), "path": "medllm_auto"}
    loop = {"path": "unsloth_loop", "tokens_per_s": 10000.0, "label_tokens_per_s": 9990.0, "peak_gib": 8.05}
    rows = throughput.table([loop, auto, {"path": "hf_peft", "error": "exit code 1"}], "fixed").splitlines()
    assert rows[0].count("|") == rows[1].count("|") == rows[2].count("|") == rows[4].count("|")
    assert rows[2] == "| unsloth_loop | 10,000 | 9,990 | 8.05 | - | 1.00x |"
    assert f"| {auto['peak_gib']:.2f} | {plan.estimate_gib:.2f} (0.95x) | 1.50x |" in rows[3]


def test_ddp_threads_gives_each_process_its_share_of_the_cpus(checkpoint, tmp_path, monkeypatch):
    """medllm_ddp_threads: medllm_ddp's run with OMP_NUM_THREADS set, where torchrun would set 1."""
    monkeypatch.setattr(throughput.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(throughput.os, "cpu_count", lambda: 32)
    argv = commands(checkpoint, tmp_path, names=("medllm_ddp", "medllm_ddp_threads"))
    plain, threads = argv["medllm_ddp"], argv["medllm_ddp_threads"]
    assert threads[:2] == ["env", "OMP_NUM_THREADS=16"] and plain[0] == sys.executable
    assert threads[2:] == plain


def test_ddp_view_is_medllm_ddp_with_gradients_as_bucket_views(checkpoint, tmp_path, monkeypatch):
    """medllm_ddp_view: medllm_ddp's run with an override that reaches DDPStrategy as a DDP argument."""
    monkeypatch.setattr(throughput.torch.cuda, "device_count", lambda: 2)
    argv = commands(checkpoint, tmp_path, names=("medllm_ddp", "medllm_ddp_view"), extra=["seed=3"])
    override = "+trainer.strategy.gradient_as_bucket_view=true"
    view = argv["medllm_ddp_view"]
    assert view == [*argv["medllm_ddp"][:-1], override, "seed=3"]
    strategy = compose_train(*view[view.index("train.py") + 1 :], f"paths.output_dir={tmp_path}").trainer.strategy
    assert strategy.gradient_as_bucket_view is True and strategy.find_unused_parameters is False


def test_ddp_nodes_starts_one_torchrun_a_gpu_meeting_on_one_port(checkpoint, tmp_path):
    """medllm_ddp_nodes: each GPU a node of its own, every node the same train.py run, extra overrides last."""
    settings = harness.Settings(str(checkpoint), "fixed", batch=2, seq=256, steps=2, warmup=1, seed=0)
    (tmp_path / "run").mkdir()
    command = medllm.command(settings, tmp_path / "run", "unsloth", gpus=2, as_nodes=True, extra=["seed=7"])
    assert command[:2] == ["bash", "-c"]
    nodes = [shlex.split(line) for line in command[2].splitlines() if "torch.distributed.run" in line]
    assert [node[0] for node in nodes] == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]
    for rank, node in enumerate(nodes):
        assert {"--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}", "--master_addr=127.0.0.1"} <= set(node)
    assert len({a for node in nodes for a in node if a.startswith("--master_port=")}) == 1
    trains = [node[node.index("train.py") + 1 : node.index("&")] for node in nodes]
    assert trains[0] == trains[1] and "hardware=ddp" in trains[0] and trains[0][-1] == "seed=7"
    cfg = compose_train(*trains[0], f"paths.output_dir={tmp_path}")
    validate(cfg, TrainConfig)
    assert cfg.seed == 7 and not cfg.data.packing
    rows = Path(cfg.data.path).read_text().splitlines()
    assert len(rows) == 2 * settings.total_steps * 2 + 8  # rows for both GPUs' batches


FAKE_PATH = """
import json, sys
log, argv = sys.argv[1], sys.argv[2:]
with open(log, "a") as f:
    f.write(" ".join(argv) + "\\n")
steps = int(next(a for a in argv if a.startswith("--steps=")).split("=")[1])
print("BENCH_RESULT " + json.dumps({"tokens_per_s": 1.0, "label_tokens_per_s": 1.0, "peak_gib": 0.0, "steps": steps}))
"""


def test_the_first_path_is_primed_untimed_before_any_path_is_measured(tmp_path, monkeypatch):
    """One untimed run of the first path (one step after the warm-up) fills the compile caches; its
    result is dropped, and every path, the first included, is then measured with the steps asked for."""
    log = tmp_path / "runs.log"

    def fake(tag: str) -> throughput.BenchPath:
        def command(settings, workdir):
            return [sys.executable, "-c", FAKE_PATH, str(log), f"--tag={tag}", *harness.settings_to_argv(settings)]

        return throughput.BenchPath(command, throughput.result_line)

    monkeypatch.setattr(throughput, "PATHS", {"a": fake("a"), "b": fake("b")})
    out = tmp_path / "results.json"
    argv = ["throughput.py", "--checkpoint", "x", "--steps", "5", "--warmup", "2", "--paths", "b,a", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    throughput.main()
    runs = [(line.split()[0], line.split()[5]) for line in log.read_text().splitlines()]
    assert runs == [("--tag=b", "--steps=1"), ("--tag=b", "--steps=5"), ("--tag=a", "--steps=5")]
    results = json.loads(out.read_text())["results"]
    assert [(r["path"], r["steps"]) for r in results] == [("b", 5), ("a", 5)]

    log.unlink()
    monkeypatch.setattr(sys, "argv", [*argv, "--no-prime"])
    throughput.main()
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["--tag=b", "--tag=a"]


def test_ddp_on_a_machine_of_one_gpu_is_still_ddp(checkpoint, tmp_path, monkeypatch):
    """medllm_ddp with one GPU: torchrun with one process and hardware=ddp (DDP's own cost), not medllm's run."""
    monkeypatch.setattr(throughput.torch.cuda, "device_count", lambda: 1)
    argv = commands(checkpoint, tmp_path, names=("medllm_ddp", "medllm"))
    ddp, one = argv["medllm_ddp"], argv["medllm"]
    assert ddp[:4] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1"]
    train = ddp[4:]
    assert [a for a in train if a not in one[1:]] == ["hardware=ddp"]
    assert compose_train(*train[1:], f"paths.output_dir={tmp_path}").trainer.strategy.find_unused_parameters is False
