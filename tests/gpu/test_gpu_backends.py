"""Both backends on a real GPU with a small Llama saved to disk (skipped without a CUDA GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers.configs import ROOT

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def train(run_dir, *overrides):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "train.py",
        "experiment=smoke",
        "hardware=gpu",
        "trainer.max_steps=6",
        "throughput_warmup_steps=2",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=900)
    return json.loads((run_dir / "summary.json").read_text())


BACKENDS = {
    "hf-4bit": [
        "model.backend=hf",
        "model.load_in_4bit=true",
        "model.dtype=bfloat16",
        "model.gradient_checkpointing=true",
    ],
    "unsloth-4bit-packed": [
        "model.backend=unsloth",
        "model.load_in_4bit=true",
        "model.dtype=auto",
        "model.gradient_checkpointing=unsloth",
        "data.packing=true",
        "export.merged_16bit=true",
    ],
    "unsloth-bf16-auto": [
        "model.backend=unsloth",
        "model.load_in_4bit=false",
        "model.dtype=auto",
        "model.gradient_checkpointing=auto",
    ],
}


class _Runs(dict):
    """Each backend's run, trained when a test first asks for it: a run cut short by a time limit still
    reports the tests of the backends trained before it."""

    def __init__(self, small_llama, tmp_path_factory) -> None:
        super().__init__()
        self.small_llama, self.tmp_path_factory = small_llama, tmp_path_factory

    def __missing__(self, name: str):
        run_dir = self.tmp_path_factory.mktemp(name)
        self[name] = (run_dir, train(run_dir, f"model.name_or_path={self.small_llama}", *BACKENDS[name]))
        return self[name]


@pytest.fixture(scope="module")
def runs(small_llama, tmp_path_factory):
    """Each backend trained once; the tests below read what the runs left."""
    return _Runs(small_llama, tmp_path_factory)


def assert_python_prints_ok(code: str) -> None:
    """Runs ``code`` in a fresh Python (plain transformers + PEFT, no Unsloth patches); it must print ok."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_few_steps_train_on_the_gpu(runs, backend):
    _, summary = runs[backend]
    assert summary["steps"] == 6
    assert summary["train_loss_last"] < summary["train_loss_first"]
    assert summary["tokens_per_s"] > 0 and summary["peak_mem_gib"] > 0


def test_packed_rows_fill_their_sequences(runs):
    _, summary = runs["unsloth-4bit-packed"]
    assert summary["data"]["data/packing_efficiency"] > 0.5


def test_unsloth_adapter_loads_with_plain_peft(small_llama, runs):
    run_dir, _ = runs["unsloth-4bit-packed"]
    check = (
        "import sys, torch; from peft import PeftModel; from transformers import AutoModelForCausalLM;"
        f"base = AutoModelForCausalLM.from_pretrained({str(small_llama)!r});"
        "ids = torch.tensor([[1, 5, 9, 12, 40]]);"
        "plain = base(ids).logits;"
        f"tuned = PeftModel.from_pretrained(base, {str(run_dir / 'adapter')!r})(ids).logits;"
        "assert torch.isfinite(tuned).all() and not torch.allclose(plain, tuned, atol=1e-4); print('ok')"
    )
    assert_python_prints_ok(check)


def test_unsloth_run_exports_the_base_with_its_adapter_merged(small_llama, runs):
    """The merged export of a QLoRA run on the GPU: plain transformers, the 16-bit base plus the adapter.
    Its logits match base + adapter up to bf16 rounding, far closer than the base alone is."""
    run_dir, _ = runs["unsloth-4bit-packed"]
    check = (
        "import torch; from peft import PeftModel; from transformers import AutoModelForCausalLM as M;"
        "ids = torch.tensor([[1, 5, 9, 12, 40, 77, 3]]);"
        f"base = M.from_pretrained({str(small_llama)!r}, dtype=torch.float32);"
        "plain = base(ids).logits;"
        f"tuned = PeftModel.from_pretrained(base, {str(run_dir / 'adapter')!r})(ids).logits;"
        f"merged = M.from_pretrained({str(run_dir / 'merged_16bit')!r}, dtype=torch.float32)(ids).logits;"
        "effect, error = (plain - tuned).abs().max().item(), (merged - tuned).abs().max().item();"
        "print(effect, error); assert torch.isfinite(merged).all() and error < 0.2 * effect; print('ok')"
    )
    assert_python_prints_ok(check)
