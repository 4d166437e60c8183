export PYTHONPATH=$PWD/.devsite:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
([ -d /tmp/r1 ] || python bench/make_checkpoint.py /tmp/r1 --adapter /tmp/r1-adapter) > $OUT/ckpt.log 2>&1
T="python bench/throughput.py --checkpoint /tmp/r1 --path-timeout 200"
CUDA_VISIBLE_DEVICES=0 $T --steps 10 --warmup 3 --mode medical --paths unsloth_trl,medllm,medllm_auto --workdir /tmp/wa --out $OUT/medical.json > $OUT/medical.log 2>&1 &
(for b in 2 8; do CUDA_VISIBLE_DEVICES=1 $T --steps 3 --warmup 1 --mode fixed --batch $b --paths medllm_auto --workdir /tmp/wb --out $OUT/estimate_b$b.json; done; CUDA_VISIBLE_DEVICES=1 MEDLLM_MEMORY_CAP_GIB=24 $T --steps 3 --warmup 1 --mode fixed --batch 4 --paths medllm_auto --workdir /tmp/wb --out $OUT/cap24_b4.json) > $OUT/estimate.log 2>&1 &
wait
tail -n 12 $OUT/medical.log; grep -A4 "^| path" $OUT/estimate.log
