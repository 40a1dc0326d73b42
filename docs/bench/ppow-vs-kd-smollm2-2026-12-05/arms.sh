#!/bin/bash
# Issue 23 protocol, SmolLM2-135M, round 1: plateau KD from the shipped SmolLM2 KD drafter (its HF
# export) on the SmolLM2 caches of this machine (math complete, chat in progress), held-out dev96,
# arms at equal CPU-seconds, tau on dev144 (disjoint from dev96). Same code and flags as Gemma's round 2.
. /work/main/.venv/bin/activate
cd /work/runs/s6
/work/main/tools/ppow-vs-kd.sh --target smollm2-135m \
  --train-cache /work/data/smollm2-v1-math,/work/data/smollm2-v1 \
  --heldout-cache /work/runs/s6/dev96-smollm2 --eval-cache /work/runs/s6/dev144-smollm2 \
  --init /work/runs/s6/smol-kd-hf --cpu-profile /work/runs/s6/cpu-profile-smollm2.json --segment 100 --patience 2 --max-kd-steps 600 \
  --kd-args "--allow-incomplete-cache --ttt-steps 3 --ttt-decay 0.8 --batch-size 8 --chunk-len 256 --precision bf16" \
  --ppow-args "--allow-incomplete-cache --precision bf16 --k-min 1 --k-max 8" \
  --arms kd,expected,expected@cpu,sampled,no-adaptive \
  --profiles gpu --budget 300 --threads 2 --parallel 1 --ks 1,2,4,8 -o pvk-smol
