#!/bin/bash
# Issue 21, session 8: the PPOW twin (and the continued-KD control at equal CPU-seconds) of the annealed
# SmolLM2 drafter (/work/runs/s7/smol-anneal/final, dev144 tau(k=4) 1.402), same flags and budget as
# issue 23's SmolLM2 round 1, the training cache the anneal read (math + the frozen 18 chat shards).
. /work/main/.venv/bin/activate
cd /work/runs/s8
/work/main/tools/ppow-vs-kd.sh --target smollm2-135m \
  --train-cache /work/data/smollm2-v1-math,/work/runs/s7/smollm2-v1-18shards \
  --heldout-cache /work/runs/s6/dev96-smollm2 --eval-cache /work/runs/s6/dev144-smollm2 \
  --start /work/runs/s7/smol-anneal/final --cpu-profile /work/runs/s6/cpu-profile-smollm2.json \
  --kd-args "--allow-incomplete-cache --ttt-steps 3 --ttt-decay 0.8 --batch-size 8 --chunk-len 256 --precision bf16" \
  --ppow-args "--allow-incomplete-cache --precision bf16 --k-min 1 --k-max 8" \
  --arms kd,expected --profiles gpu --budget 300 --threads 2 --parallel 1 --ks 1,2,4,8 -o pvk-anneal
