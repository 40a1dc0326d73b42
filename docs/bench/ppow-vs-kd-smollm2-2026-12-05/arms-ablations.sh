#!/bin/bash
# Issue 23, SmolLM2 round 1 continued (session 7): the remaining ablation arms, same start, flags and
# budget as /work/runs/s6/pvk-smol.sh. The chat cache is read through a frozen copy of the 7 shards the
# first arms trained on (the data build is adding shards to /work/data/smollm2-v1 again).
. /work/main/.venv/bin/activate
cd /work/runs/s6
/work/main/tools/ppow-vs-kd.sh --target smollm2-135m \
  --train-cache /work/data/smollm2-v1-math,/work/runs/s7/smollm2-v1-7shards \
  --heldout-cache /work/runs/s6/dev96-smollm2 --eval-cache /work/runs/s6/dev144-smollm2 \
  --init /work/runs/s6/smol-kd-hf --cpu-profile /work/runs/s6/cpu-profile-smollm2.json --segment 100 --patience 2 --max-kd-steps 600 \
  --kd-args "--allow-incomplete-cache --ttt-steps 3 --ttt-decay 0.8 --batch-size 8 --chunk-len 256 --precision bf16" \
  --ppow-args "--allow-incomplete-cache --precision bf16 --k-min 1 --k-max 8" \
  --arms kd,expected,expected@cpu,sampled,no-adaptive,no-speedup,no-proximity,anchor-reference,no-anchor \
  --profiles gpu --budget 300 --threads 2 --parallel 1 --ks 1,2,4,8 -o pvk-smol
