"""bench/generation.py's medllm paths, end to end on the CPU: a small Llama with the R1 tokenizer's
vocabulary (the bench draws R1 token ids), both modes in one process, as on the GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from bench import generation
from tests.helpers.configs import ROOT


@pytest.fixture(scope="module")
def r1_vocabulary_llama(tmp_path_factory):
    config = LlamaConfig(
        vocab_size=128_256,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=4096,
        eos_token_id=generation.EOS_ID,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("r1_vocabulary_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_each_medllm_path_runs_fixed_then_r1_in_one_process(r1_vocabulary_llama, tmp_path):
    paths = ("medllm", "medllm_sdpa")
    out = tmp_path / "generation.json"
    command = [
        sys.executable,
        "bench/generation.py",
        f"--checkpoint={r1_vocabulary_llama}",
        "--model-override=load_in_4bit=false",  # NF4 rounding needs bitsandbytes, a GPU extra
        "--model-override=backend=hf",
        "--modes=fixed,r1",
        "--prompts=fixed=2,r1=3",
        "--new-tokens=fixed=4,r1=8",
        "--batch=2",
        f"--paths={','.join(paths)}",
        f"--out={out}",
        f"--workdir={tmp_path / 'work'}",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    for path in paths:
        results = {r["mode"]: r for r in rows if r["path"].startswith(path) and not r["path"].startswith(f"{path}_")}
        assert set(results) == {"fixed", "r1"}, path
        assert results["fixed"]["new_tokens"] == 2 * 4  # every row its whole budget
        assert 0 < results["r1"]["new_tokens"] <= 3 * 8  # rows end at their own EOS or budget
        # the same weights through plain generate: in float32 on the CPU the engine's completions are its own
        assert results["fixed"]["identical_to_plain_generate"] == 1.0, path
