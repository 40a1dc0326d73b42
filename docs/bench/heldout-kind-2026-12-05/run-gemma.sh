#!/bin/bash
# The same question for Gemma 3 270M: the shipped gemma3-270m-kd (trained on T0 tasks and GSM8K of the
# first 6,000 rows of train-prompts.jsonl, plus long answers drawn from LONG_ANSWER_SOURCES across the file)
# on the target's 64 greedy tokens (`qa` template) of three prompt sets it never trained on, and of T0
# prompts it did train on against the unseen ones with its training context (traint0, at the end):
#   t0     : up to 144 T0 prompts after row 6,000 whose sources the long-answer cache did not draw from (its
#            kind), those sharing text with the first 6,000 rows dropped by the prompts stage's filter
#   chat   : the 127 SmolLM2-synthesised requests of run.sh (prompts-chat.jsonl; the chat mix's kind)
#   dev144 : the 144 Spec-Bench dev prompts no training run or selection used
# Usage: run-gemma.sh WORK_DIR (run.sh's WORK_DIR: dev144.jsonl is reused, made if absent).
set -eu
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
W=${1:?usage: run-gemma.sh WORK_DIR}
S=$REPO/../shared/data
OUT=$(dirname "$0")
mkdir -p "$W"
. "$REPO/.venv/bin/activate"
python - "$S" "$W" <<'PY'
import json, os, random, sys
from ppow.train.prompts import LONG_ANSWER_SOURCES
S, W = sys.argv[1:3]
rows = [json.loads(l) for l in open(f"{S}/train-prompts.jsonl")]
t0 = [r for r in rows[6000:] if r["source"].startswith("t0/") and not LONG_ANSWER_SOURCES.search(r["source"])]
with open(f"{W}/t0-candidates.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in random.Random(7).sample(t0, 200))
# prompts it DID train on (cache A: the first 3,968 of the first 6,000 rows, in order): 66 such T0 prompts
# of the first 3,000 rows
train = [r for r in rows[:3000] if r["source"].startswith("t0/") and not LONG_ANSWER_SOURCES.search(r["source"])]
with open(f"{W}/traint0.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in random.Random(7).sample(train, 66))
with open(f"{W}/first6000.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows[:6000])
if not os.path.exists(f"{W}/dev144.jsonl"):  # run.sh's split: every fifth dev prompt and the one two after it are dev96
    dev = open(f"{S}/specbench-dev.jsonl").read().splitlines()
    open(f"{W}/dev144.jsonl", "w").write("".join(l + "\n" for i, l in enumerate(dev) if i % 5 not in (0, 2)))
PY
# T0 applies several templates to one article: drop candidates that share text with the trained range
[ -s "$W/t0.jsonl" ] || ppow-train prompts --include "$W/t0-candidates.jsonl" --exclude "$S/specbench-dev.jsonl" \
  --exclude "$W/first6000.jsonl" -o "$W/t0.jsonl" --quiet
cp "$OUT/prompts-chat.jsonl" "$W/chat.jsonl"
for set in t0 chat dev144; do
  ppow-train data --target gemma3-270m --prompts "$W/$set.jsonl" --limit 144 --template qa --prompt-tail 0 --max-new 64 \
    --layers auto --topk 16 --n-parallel 16 --threads 2 -o "$W/gemma-cache-$set" --quiet
done
[ -d "$W/gemma-kd" ] || ppow-convert drafter "$REPO/python/ppow/drafters/gemma3-270m-kd.gguf" --to hf -o "$W/gemma-kd"
for set in t0 chat dev144; do
  ppow-train eval --drafter "$W/gemma-kd" --target gemma3-270m --cache "$W/gemma-cache-$set" --k 1,2,4,8 --quiet \
    -o "$OUT/gemma-kd-$set.json" > /dev/null
done
# trained-on against unseen T0 prompts with the drafter's training context (the prompt's last 64 tokens)
for set in traint0 t0; do
  ppow-train data --target gemma3-270m --prompts "$W/$set.jsonl" --template qa --prompt-tail 64 --max-new 64 \
    --layers auto --topk 16 --n-parallel 16 --threads 2 -o "$W/gemma-cache-$set-tail64" --quiet
  ppow-train eval --drafter "$W/gemma-kd" --target gemma3-270m --cache "$W/gemma-cache-$set-tail64" --k 1,2,4,8 \
    --quiet -o "$OUT/gemma-kd-$set-tail64.json" > /dev/null
done
