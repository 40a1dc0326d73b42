#!/bin/bash
# Issue 21, session 8: does SmolLM2's own chat data pay when a drafter is trained on it from scratch?
# The shipped smollm2-135m-kd's recipe (feature drafter, hidden 576, 9 heads / 3 KV, MLP 1536, draft
# vocabulary 16,384, KD + training-time test 3 steps decay 0.8, batch 8 x 256, lr 5e-4 cosine, bf16,
# 1,600 steps) on the data of this wave: math (149,328 positions) + the first 24 chat shards of
# smollm2-v1 (frozen copy), instead of the 371k positions (154k generated) of T0/GSM8K/long answers.
. /work/main/.venv/bin/activate
cd /work/runs/s8
ppow-train kd --cache /work/data/smollm2-v1-math --cache /work/runs/s8/smollm2-v1-24shards --allow-incomplete-cache \
  --target smollm2-135m --drafter-kind feature --heads 9 --kv-heads 3 --intermediate 1536 --draft-vocab 16384 \
  --ttt-steps 3 --ttt-decay 0.8 --batch-size 8 --chunk-len 256 --lr 5e-4 --warmup 50 --schedule cosine --steps 1600 \
  --precision bf16 --threads 2 --save-every 100 --resume --eval-cache /work/runs/s6/dev96-smollm2 --eval-every 400 \
  --eval-k 4 --quiet -o smol-scratch &&
ppow-train eval --drafter smol-scratch/final --target smollm2-135m --cache /work/runs/s6/dev144-smollm2 --k 1,2,4,8 --quiet \
  -o smol-scratch-dev144.json
