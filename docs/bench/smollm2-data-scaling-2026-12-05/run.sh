#!/bin/bash
# Issue 21 data scaling on SmolLM2: the round-1 plateau recipe (same start, lr, flags, 300 steps, dev96
# every 100) on more of SmolLM2's own data: math (149k) + 18 chat shards (329k) = 478k positions,
# against round 1's 278k (7 chat shards). Then tau on dev144 of the step-300 checkpoint.
. /work/main/.venv/bin/activate
cd /work/runs/s7
ppow-train kd --cache /work/data/smollm2-v1-math --cache /work/runs/s7/smollm2-v1-18shards --allow-incomplete-cache \
  --target smollm2-135m --init /work/runs/s6/smol-kd-hf --lr 1e-4 --ttt-steps 3 --ttt-decay 0.8 --batch-size 8 \
  --chunk-len 256 --precision bf16 --steps 600 --stop-after 300 --schedule constant --save-every 100 --resume \
  --threads 2 --eval-cache /work/runs/s6/dev96-smollm2 --eval-every 100 --eval-k 4 --quiet -o smol-more &&
ppow-train eval --drafter smol-more/ckpt --target smollm2-135m --cache /work/runs/s6/dev144-smollm2 --k 1,2,4,8 --quiet \
  -o smol-more-dev144.json
