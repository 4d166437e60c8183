export PYTHONPATH=$PWD/.devsite:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv > $OUT/card.txt
([ -d /tmp/r1 ] || python bench/make_checkpoint.py /tmp/r1 --adapter /tmp/r1-adapter) > $OUT/ckpt.log 2>&1
T="python bench/throughput.py --checkpoint /tmp/r1 --steps 10 --warmup 3 --path-timeout 200"
# phase A: one GPU each
CUDA_VISIBLE_DEVICES=0 $T --mode fixed --batch 4 --paths medllm,medllm_auto --workdir /tmp/wa --out $OUT/fixed_b4.json > $OUT/fixed_b4.log 2>&1 &
CUDA_VISIBLE_DEVICES=1 $T --mode fixed --batch 3 --paths medllm,medllm_auto --workdir /tmp/wb --out $OUT/fixed_b3.json > $OUT/fixed_b3.log 2>&1 &
wait
# phase B: both GPUs, beside phase A's one-GPU medllm of the same settings
$T --mode fixed --batch 4 --paths medllm_ddp,medllm_ddp_nodes --workdir /tmp/wc --out $OUT/fixed_b4.json --append > $OUT/ddp.log 2>&1
for f in fixed_b4 fixed_b3 ddp; do tail -n 12 $OUT/$f.log; done
