#!/bin/bash
# Issue 21: at a fixed number of training steps, do more distinct sequences lift acceptance on unseen
# prompts of the same kind (and fewer ones only memorise)? SmolLM2-135M, its GSM8K answers
# (tools/build-data.sh's smollm2-v1-math: 500 prompts, chat template, up to 320 new tokens), a feature
# drafter from scratch with the SmolLM2 release recipe (hidden 576, 9 heads / 3 KV, MLP 1536, KD +
# training-time test 3 steps, batch 8 x 256, lr 5e-4 cosine, bf16) cut to 300 steps, on
#   few : the cache's first 2 shards (128 sequences)
#   all : all 8 shards (500 sequences)
# then the heldout-kind evaluation caches: math trained-on (the first 101 prompts: in both sets or, for
# `few`, mostly), math unseen (101 GSM8K problems outside the 500), chat unseen.
# Usage: run.sh DATA_DIR HELDOUT_DIR WORK_DIR  (HELDOUT_DIR: heldout-kind-2026-12-05/run.sh's WORK_DIR)
set -eu
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
D=${1:?usage}; H=${2:?usage}; W=${3:?usage}
OUT=$(dirname "$0")
. "$REPO/.venv/bin/activate"
C=$D/smollm2-v1-math
mkdir -p "$W/few"
python - "$C" "$W/few" <<'PY'
import json, os, sys
src, dst = sys.argv[1:3]
meta = json.load(open(f"{src}/meta.json"))
meta["complete"] = False  # a part of the cache: trained on with --allow-incomplete-cache
json.dump(meta, open(f"{dst}/meta.json", "w"), indent=1)
for n in range(2):
    for ext in ("json", "safetensors"):
        name = f"shard_{n:05d}.{ext}"
        if not os.path.exists(f"{dst}/{name}"):
            os.symlink(f"{src}/{name}", f"{dst}/{name}")
PY
for arm in few all; do
  cache=$W/few; [ $arm = all ] && cache=$C
  ppow-train kd --cache "$cache" --allow-incomplete-cache --target smollm2-135m --drafter-kind feature --heads 9 \
    --kv-heads 3 --intermediate 1536 --draft-vocab 16384 --ttt-steps 3 --ttt-decay 0.8 --batch-size 8 --chunk-len 256 \
    --lr 5e-4 --warmup 50 --schedule cosine --steps 300 --precision bf16 --threads 2 --save-every 100 --resume \
    --quiet -o "$W/$arm"
  for set in trainmath math chat; do
    ppow-train eval --drafter "$W/$arm/final" --target smollm2-135m --cache "$H/cache-$set" --k 1,4 --quiet \
      -o "$OUT/$arm-$set.json" > /dev/null
  done
done
