#!/bin/bash
# one extra arm after the table: the expected estimator without the per-window std normalisation
. /work/main/.venv/bin/activate
cd /work/runs/s5/pvk2
ppow-train ppow --cache /work/data/gemma-v1 --cache /work/data/gemma-v1-math --cache /work/data/gemma-v1-translate \
  --target gemma3-270m --init /work/runs/s4/kd8k/final --allow-incomplete-cache --precision bf16 --k-min 1 --k-max 8 \
  --estimator expected --adv-norm none --cost-profile profiles/gpu.json --lr 1e-4 --schedule constant --warmup 0 \
  --steps 100000000 --cpu-budget 400 --save-every 0 --resume --threads 1 --quiet -o "arms/adv-none@gpu" > "arms/adv-none@gpu.log" 2>&1 &&
ppow-train eval --drafter "arms/adv-none@gpu/final" --cache /work/runs/s5/dev144-gemma --k 1,2,4,8 --quiet -o "eval/adv-none@gpu.json" > /dev/null
