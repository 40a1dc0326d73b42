#!/bin/bash
# Issue 21: where do the drafters lose acceptance: on prompts of another kind (Spec-Bench asks what the
# training prompts do not), or already on new prompts of their own kind (they fit their training
# sequences)? The shipped SmolLM2 KD drafter and the previous release's, on the target's greedy
# continuations (64 tokens) of three prompt sets none of them trained on, and the shipped one also on
# prompts it did train on (trainchat, trainmath, below):
#   chat   : new SmolLM2-synthesised requests (the training chat mix's own synthesis, another seed), with
#            near-copies of the training prompts and of Spec-Bench dropped by the prompts stage's filters
#   math   : GSM8K problems outside the 500 the math cache answered (near-copies of those dropped)
#   dev144 : the 144 Spec-Bench dev prompts no training run or selection used (every fifth and the one
#            two after it are dev96; these are the rest)
# Usage: run.sh WORK_DIR (caches and JSON there; the data build's prompt files are remade if absent).
set -eu
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
W=${1:?usage: run.sh WORK_DIR}
S=$REPO/../shared/data
OUT=$(dirname "$0")
mkdir -p "$W"
. "$REPO/.venv/bin/activate"
# the training prompt files, exactly as tools/build-data.sh makes them (seeded, so remade identically)
STAGES="prompts prompts-math" bash "$REPO/tools/build-data.sh" "$W/data"
[ -s "$W/chat.jsonl" ] || ppow-train prompts --target smollm2-135m --n 160 --temp 1.0 --max-new 128 --n-parallel 64 \
  --seed 7 --exclude "$S/specbench-dev.jsonl" --exclude "$W/data/prompts-v1.jsonl" -o "$W/chat.jsonl" --quiet
[ -s "$W/math.jsonl" ] || ppow-train prompts --include "$S/train-prompts.jsonl" --include-source '^gsm8k' \
  --include-limit 120 --seed 7 --exclude "$S/specbench-dev.jsonl" --exclude "$W/data/prompts-v1-math.jsonl" \
  -o "$W/math.jsonl" --quiet
python - "$S/specbench-dev.jsonl" "$W/dev144.jsonl" <<'PY'
import sys
lines = open(sys.argv[1]).read().splitlines()
open(sys.argv[2], "w").write("".join(l + "\n" for i, l in enumerate(lines) if i % 5 not in (0, 2)))
PY
# the same, on prompts the shipped drafter DID train on (its answers regenerated, greedy): the self-written
# requests among the first 1,000 rows of prompts-v1.jsonl (inside the 18 chat shards it saw) and the first
# 101 of the 500 math prompts
python - "$W" <<'PY'
import json, sys
W = sys.argv[1]
rows = [json.loads(l) for l in open(f"{W}/data/prompts-v1.jsonl")][:1000]
open(f"{W}/trainchat.jsonl", "w").writelines(json.dumps(r) + "\n" for r in rows if r["source"].startswith("self:"))
open(f"{W}/trainmath.jsonl", "w").writelines(open(f"{W}/data/prompts-v1-math.jsonl").readlines()[:101])
PY
for set in chat math dev144 trainchat trainmath; do
  ppow-train data --target smollm2-135m --prompts "$W/$set.jsonl" --limit 144 --template chat --prompt-tail 0 \
    --max-new 64 --layers auto --topk 16 --n-parallel 16 --threads 2 -o "$W/cache-$set" --quiet
done
[ -d "$W/kd-new" ] || ppow-convert drafter "$REPO/python/ppow/drafters/smollm2-135m-kd.gguf" --to hf -o "$W/kd-new"
[ -s "$W/kd-old.gguf" ] || git -C "$REPO" show 8722f99:python/ppow/drafters/smollm2-135m-kd.gguf > "$W/kd-old.gguf"
[ -d "$W/kd-old" ] || ppow-convert drafter "$W/kd-old.gguf" --to hf -o "$W/kd-old"
for d in kd-new kd-old; do
  for set in chat math dev144 $([ $d = kd-new ] && echo trainchat trainmath); do
    ppow-train eval --drafter "$W/$d" --target smollm2-135m --cache "$W/cache-$set" --k 1,2,4,8 --quiet \
      -o "$OUT/$d-$set.json" > /dev/null
  done
done
