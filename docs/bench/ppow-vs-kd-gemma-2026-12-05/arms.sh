#!/bin/bash
# Issue 23 protocol, round 2: start = kd8k/final (continued KD on chat+math+translate, rebuilt 8k vocab,
# plateau by early stop on dev96); arms at equal CPU-seconds; tau on dev144 (disjoint from dev96).
. /work/main/.venv/bin/activate
cd /work/runs/s5
/work/main/tools/ppow-vs-kd.sh --target gemma3-270m \
  --train-cache /work/data/gemma-v1,/work/data/gemma-v1-math,/work/data/gemma-v1-translate \
  --heldout-cache /work/runs/s3/dev96-gemma --eval-cache /work/runs/s5/dev144-gemma \
  --start /work/runs/s4/kd8k/final --cpu-profile /work/runs/s3/cpu-profile.json \
  --kd-args "--allow-incomplete-cache --ttt-steps 3 --ttt-decay 0.8 --batch-size 8 --chunk-len 256 --precision bf16" \
  --ppow-args "--allow-incomplete-cache --precision bf16 --k-min 1 --k-max 8" \
  --arms kd,expected,sampled,no-speedup,no-proximity,no-adaptive,anchor-reference,no-anchor,expected@cpu \
  --profiles gpu --budget 400 --threads 1 --parallel 2 --ks 1,2,4,8 -o pvk2
