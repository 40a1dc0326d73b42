#!/bin/bash
# objective-weights on both targets' issue-23 starts: the expected estimator as the arms ran it
# (adaptive, H200 profile) and without adaptive windowing (k = 4), 6 batches each.
. /work/main/.venv/bin/activate
cd /work/main
OW="python tools/objective-weights.py --batches 6 --threads 1 --kd-args"
KDA="--ttt-steps 3 --ttt-decay 0.8 --batch-size 8 --chunk-len 256"
S="--init /work/runs/s6/pvk-smol/best --cache /work/data/smollm2-v1-math --cache /work/runs/s7/smollm2-v1-7shards --allow-incomplete-cache --cost-profile /work/runs/s6/pvk-smol/profiles/gpu.json"
G="--init /work/runs/s4/kd8k/final --cache /work/data/gemma-v1 --cache /work/data/gemma-v1-math --cache /work/data/gemma-v1-translate --allow-incomplete-cache --target gemma3-270m --cost-profile /work/runs/s5/pvk2/profiles/gpu.json"
$OW "$KDA" $S --ppow-args "--k-min 1 --k-max 8" -o /work/runs/s7/ow/smol-expected.json > /work/runs/s7/ow/smol-expected.log 2>&1
$OW "$KDA" $S --ppow-args "--no-adaptive-window --k 4" -o /work/runs/s7/ow/smol-fixed4.json > /work/runs/s7/ow/smol-fixed4.log 2>&1
$OW "$KDA" $G --ppow-args "--k-min 1 --k-max 8" -o /work/runs/s7/ow/gemma-expected.json > /work/runs/s7/ow/gemma-expected.log 2>&1
$OW "$KDA" $G --ppow-args "--no-adaptive-window --k 4" -o /work/runs/s7/ow/gemma-fixed4.json > /work/runs/s7/ow/gemma-fixed4.log 2>&1
