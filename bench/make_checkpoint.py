"""Writes a random-weight bf16 checkpoint of the DeepSeek-R1-Distill-Llama-8B shape, with a small tokenizer.

The benchmark measures speed and memory, which depend on the shape alone, so it needs no download: the
weights are drawn on the GPU (about 35 s for 16 GB, most of it writing) and the tokenizer is a byte-level
BPE trained in-process on generated text, with the R1 special tokens. Its vocabulary is far smaller than
the model's 128,256 rows, which the Unsloth and transformers loaders accept.

    python bench/make_checkpoint.py /tmp/r1-8b-random            # skips the work if already there
    python bench/make_checkpoint.py /tmp/tiny --shape tiny --device cpu   # a few MB, for smoke tests
    python bench/make_checkpoint.py /tmp/r1-8b-random --adapter /tmp/r1-adapter   # + a random LoRA adapter
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
SPECIAL_TOKENS = [BOS, EOS, "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", PAD]
TOKENIZER_VOCAB = 4096

# Llama-3.1-8B / DeepSeek-R1-Distill-Llama-8B, from its config.json; "tiny" keeps the vocabulary and RoPE.
SHAPES = {
    "llama8b": {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "num_attention_heads": 32},
    "tiny": {"hidden_size": 256, "num_hidden_layers": 2, "intermediate_size": 512, "num_attention_heads": 4},
}
KV_HEADS = {"llama8b": 8, "tiny": 2}


def model_config(shape: str) -> LlamaConfig:
    return LlamaConfig(
        **SHAPES[shape],
        num_key_value_heads=KV_HEADS[shape],
        vocab_size=128256,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=128000,
        eos_token_id=128001,
        tie_word_embeddings=False,
    )


def training_text(lines: int = 20000, seed: int = 0) -> list[str]:
    """Clinical-sounding sentences: enough for BPE merges on words, numbers and punctuation."""
    words = [
        "patient",
        "presents",
        "with",
        "acute",
        "chronic",
        "pain",
        "fever",
        "cough",
        "dyspnea",
        "chest",
        "abdominal",
        "headache",
        "nausea",
        "history",
        "of",
        "hypertension",
        "diabetes",
        "mellitus",
        "asthma",
        "infection",
        "blood",
        "pressure",
        "heart",
        "rate",
        "mg",
        "dose",
        "daily",
        "diagnosis",
        "treatment",
        "therapy",
        "likely",
        "most",
        "appropriate",
        "next",
        "step",
        "management",
        "examination",
        "reveals",
        "elevated",
        "decreased",
        "normal",
        "serum",
        "level",
        "laboratory",
        "findings",
        "imaging",
        "shows",
        "lesion",
        "the",
        "a",
        "and",
        "or",
        "is",
        "was",
        "which",
        "what",
        "in",
        "on",
        "for",
        "to",
        "after",
        "before",
        "year",
        "old",
        "woman",
        "man",
        "child",
        "question",
        "answer",
    ]
    rng = random.Random(seed)
    text = []
    for _ in range(lines):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(5, 25)))
        text.append(f"{sentence.capitalize()}, {rng.randint(1, 300)} {rng.choice(words)}.")
    return text


def build_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    # Like the R1 tokenizer: BOS is prepended to every encoded text.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="right",
        model_max_length=16384,
    )


def is_complete(out: Path) -> bool:
    weights = (out / "model.safetensors").exists() or (out / "model.safetensors.index.json").exists()
    return weights and (out / "config.json").exists() and (out / "tokenizer.json").exists()


def write_checkpoint(out: Path, shape: str, device: str, seed: int) -> None:
    """Writes into a sibling folder first and renames it, so an interrupted run leaves no half checkpoint."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    torch.manual_seed(seed)
    start = time.perf_counter()
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(model_config(shape))
    finally:
        torch.set_default_dtype(default_dtype)
    drawn = time.perf_counter()
    model.save_pretrained(partial, max_shard_size="5GB")
    build_tokenizer().save_pretrained(partial)
    partial.rename(out)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {out}: {params / 1e9:.2f}B parameters, drawn in {drawn - start:.1f} s, "
        f"saved in {time.perf_counter() - drawn:.1f} s"
    )


def write_adapter(out: Path, checkpoint: Path, seed: int) -> None:
    """A LoRA adapter of the checkpoint (r 16 on all 7 projections, random non-zero B), as PEFT saves one.

    The model is built on the meta device, so this takes seconds and no GPU: only the LoRA tensors are drawn.
    """
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=16, lora_alpha=16, target_modules=targets, base_model_name_or_path=str(checkpoint))
    with torch.device("meta"):
        model = get_peft_model(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint)), config)
    gen = torch.Generator().manual_seed(seed)
    state = {
        name: torch.randn(tensor.shape, generator=gen, dtype=torch.float32).mul_(0.01).to(torch.bfloat16)
        for name, tensor in get_peft_model_state_dict(model).items()
    }
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_file(state, out / "adapter_model.safetensors")
    print(f"wrote {out}: {len(state)} LoRA tensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="checkpoint folder to write")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama8b")
    parser.add_argument("--device", default="cuda", help="where the weights are drawn (cuda is ~10x faster)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adapter", type=Path, default=None, help="also write a random LoRA adapter of it here")
    args = parser.parse_args()
    if is_complete(args.out):
        print(f"{args.out} already holds a checkpoint; nothing to do")
    elif args.out.exists():
        raise SystemExit(f"{args.out} exists but holds no complete checkpoint: remove it or choose another folder")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_checkpoint(args.out, args.shape, args.device, args.seed)
    if args.adapter:
        write_adapter(args.adapter, args.out, args.seed + 1)


if __name__ == "__main__":
    main()
