#!/bin/bash
# Issue 21, Gemma schedule check: from kd8k (its constant-rate dev96 plateau; dev144 tau(k=4) 1.718),
# 200 steps with the rate annealed by cosine 1e-4 -> 1e-5 on the same three caches, then tau on dev144.
. /work/main/.venv/bin/activate
cd /work/runs/s7
ppow-train kd --cache /work/data/gemma-v1 --cache /work/data/gemma-v1-math --cache /work/data/gemma-v1-translate \
  --allow-incomplete-cache --target gemma3-270m --init /work/runs/s4/kd8k/final --lr 1e-4 --warmup 0 --schedule cosine \
  --steps 200 --ttt-steps 3 --ttt-decay 0.8 --batch-size 8 --chunk-len 256 --precision bf16 --save-every 100 --resume \
  --threads 2 --quiet -o gemma-anneal &&
ppow-train eval --drafter gemma-anneal/final --target gemma3-270m --cache /work/runs/s5/dev144-gemma --k 1,2,4,8 --quiet \
  -o gemma-anneal-dev144.json
