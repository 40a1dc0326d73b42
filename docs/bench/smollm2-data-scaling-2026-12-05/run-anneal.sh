#!/bin/bash
# Issue 21, SmolLM2 schedule check: from the 478k-position run's step 300 (dev144 1.387), 200 more
# steps with the learning rate annealed by cosine from 1e-4 to 1e-5, then tau on dev96 and dev144.
. /work/main/.venv/bin/activate
cd /work/runs/s7
ppow-train kd --cache /work/data/smollm2-v1-math --cache /work/runs/s7/smollm2-v1-18shards --allow-incomplete-cache \
  --target smollm2-135m --init smol-more/ckpt --lr 1e-4 --warmup 0 --schedule cosine --steps 200 --ttt-steps 3 \
  --ttt-decay 0.8 --batch-size 8 --chunk-len 256 --precision bf16 --save-every 100 --resume --threads 2 \
  --eval-cache /work/runs/s6/dev96-smollm2 --eval-every 100 --eval-k 4 --quiet -o smol-anneal &&
ppow-train eval --drafter smol-anneal/final --target smollm2-135m --cache /work/runs/s6/dev144-smollm2 --k 1,2,4,8 --quiet \
  -o smol-anneal-dev144.json
