"""train.py end to end on the CPU, as a user runs it: a real Hydra app, Lightning Trainer, PEFT adapter."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model

from medllm.models.lora import LoraSpec
from medllm.models.tiny import tiny_llama, tiny_tokenizer
from tests.helpers.cli import train_py
from tests.helpers.configs import SHARED_DATA

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke")
    train_py("experiment=smoke", f"hydra.run.dir={run_dir}")
    return run_dir


def test_smoke_run_leaves_adapter_checkpoint_and_summary(smoke_run):
    assert (smoke_run / "adapter" / "adapter_model.safetensors").is_file()
    assert (smoke_run / "adapter" / "adapter_config.json").is_file()
    assert (smoke_run / "adapter" / "tokenizer.json").is_file()
    assert (smoke_run / "checkpoints" / "last.ckpt").is_file()
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["train_loss_last"] < summary["train_loss_first"]
    assert summary["steps"] == 30
    assert summary["tokens_per_s"] > 0 and summary["peak_mem_gib"] > 0
    assert summary["val_loss"] > 0


def test_checkpoint_holds_only_trainable_weights(smoke_run):
    ckpt = torch.load(smoke_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"] and ckpt["global_step"] == 30


def test_saved_adapter_reloads_onto_the_base_with_the_trained_logits(smoke_run):
    tokenizer = tiny_tokenizer()
    ids = tokenizer("<｜User｜>Chest pain and ST elevation?<｜Assistant｜><think>\n", return_tensors="pt")["input_ids"]
    # The trained model, rebuilt from the checkpoint's LoRA weights...
    trained = get_peft_model(tiny_llama(tokenizer, seed=0), LoraSpec(r=8, alpha=16).peft_config())
    ckpt = torch.load(smoke_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    missing, unexpected = trained.load_state_dict(
        {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}, strict=False
    )
    assert not unexpected and all("lora_" not in k for k in missing)
    # ...and the base with the adapter folder loaded by plain PEFT.
    reloaded = PeftModel.from_pretrained(tiny_llama(tokenizer, seed=0), smoke_run / "adapter")
    base = tiny_llama(tokenizer, seed=0)
    with torch.no_grad():
        trained_logits = trained.eval()(ids).logits
        reloaded_logits = reloaded.eval()(ids).logits
        base_logits = base.eval()(ids).logits
    torch.testing.assert_close(reloaded_logits, trained_logits)
    assert not torch.allclose(reloaded_logits, base_logits, atol=1e-3)


def test_bad_row_stops_before_any_model_is_loaded(tmp_path):
    rows = [{"Question": f"q{i}", "Complex_CoT": f"c{i}", "Response": f"r{i}"} for i in range(10)]
    del rows[6]["Response"]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = train_py("experiment=smoke", "data=local", f"data.path={path}", f"hydra.run.dir={tmp_path}/run", check=False)
    assert out.returncode != 0
    assert "row 7" in out.stderr and "'Response'" in out.stderr and str(path) in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert "Trainable params" not in out.stdout + out.stderr  # the model summary never printed


@pytest.mark.skipif(not (SHARED_DATA / "medical_o1_demo.json").is_file(), reason="real medical-o1 rows not present")
def test_real_medical_o1_rows_train_through_data_local(tmp_path):
    train_py(
        "experiment=smoke",
        "data=local",
        f"data.path={SHARED_DATA / 'medical_o1_demo.json'}",
        "max_seq_length=4096",
        "trainer.max_steps=3",
        "data.batch_size=2",
        f"hydra.run.dir={tmp_path}",
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 3
    assert summary["data"]["data/rows_kept"] >= 140
