#!/bin/bash
# Training and generation speed of this tree beside another checkout of the project (say, before a change),
# on one GPU, in one call: the fixed-shape medllm paths of throughput.py and generation.py, each tree its own.
#
#   git worktree add /tmp/before <rev> && cp -r /tmp/before .before    # a copy inside this tree
#   bench/compare_trees.sh .before OUT_DIR                              # on the GPU machine
#
# Needs .devsite beside src/ (the GPU packages: Unsloth, bitsandbytes, TRL), and writes a random R1-shaped checkpoint to
# /tmp/r1 if none is there. Each step has its own time limit, so a hang costs one step, not the call.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD OTHER=$(realpath "$1") OUT=$(realpath -m "$2")
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
stamp() { echo "=== $(date +%s) $*"; }
this() { (cd "$ROOT" && PYTHONPATH=$ROOT/.devsite:$ROOT/src "$@"); }
other() { (cd "$OTHER" && PYTHONPATH=$ROOT/.devsite:$OTHER/src "$@"); }
if [ ! -f /tmp/r1/config.json ]; then
  stamp make_checkpoint
  this python bench/make_checkpoint.py /tmp/r1 > "$OUT/make_checkpoint.log" 2>&1 || { tail -30 "$OUT/make_checkpoint.log"; exit 1; }
fi
# The same workdir for both trees: the second reuses Unsloth's generated modules, as a primed run does.
TP="bench/throughput.py --checkpoint /tmp/r1 --mode fixed --paths medllm --steps 8 --warmup 2 --path-timeout 200 --no-prime --workdir /tmp/tpw"
stamp throughput_this; this timeout 210 python $TP --out "$OUT/throughput_this.json" > "$OUT/throughput_this.log" 2>&1; tail -3 "$OUT/throughput_this.log"
stamp throughput_other; other timeout 210 python $TP --out "$OUT/throughput_other.json" > "$OUT/throughput_other.log" 2>&1; tail -3 "$OUT/throughput_other.log"
GEN="bench/generation.py --checkpoint /tmp/r1 --modes fixed --prompts fixed=64 --new-tokens fixed=128 --batch 64 --paths medllm --path-timeout 150"
stamp generation_this; this timeout 160 python $GEN --out "$OUT/generation_this.json" --workdir /tmp/gen_this > "$OUT/generation_this.log" 2>&1; tail -4 "$OUT/generation_this.log"
stamp generation_other; other timeout 160 python $GEN --out "$OUT/generation_other.json" --workdir /tmp/gen_other > "$OUT/generation_other.log" 2>&1; tail -4 "$OUT/generation_other.log"
stamp done
