#!/bin/bash
# Issue 21's data recipe as one resumable script: prompts of the target's own kind, then each target
# answers them through the data engine (the chat mix, 500 GSM8K math word problems and ~1,100 German-to-English
# translation requests, each in its own cache),
# greedy first, then a sampled second pass (temperature 0.8, its own cache) for more positions and varied
# answers. Every stage resumes where a killed run stopped, so the
# same command continues the build in a later session. Caches live outside the repository.
#   nohup nice -n 5 bash tools/build-data.sh /work/data >> /work/data/build.log 2>&1 &
# Env: SHARED (default ../shared/data next to the repo), THREADS (2), STAGES (default: all, in order:
# prompts prompts-math prompts-translate gemma-math gemma-translate gemma smollm2-math smollm2-translate smollm2
# gemma-t08 smollm2-t08).
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
D=${1:?usage: build-data.sh OUT_DIR}
S=${SHARED:-$REPO/../shared/data}
THREADS=${THREADS:-2}
STAGES=${STAGES:-"prompts prompts-math prompts-translate gemma-math gemma-translate gemma smollm2-math smollm2-translate smollm2 gemma-t08 smollm2-t08"}
mkdir -p "$D"
stamp() { echo "[$(date -u +%FT%TZ)] $*"; }
data() {  # data NAME TARGET TEMPLATE PROMPTS [extra flags]: one target's answers to the prompts, one cache
  local name=$1 target=$2 template=$3 prompts=$4; shift 4
  stamp "$name: $target answers $prompts ($template template)"
  ppow-train data --target "$target" --prompts "$D/$prompts" --template "$template" --max-new 320 \
    --prompt-tail 256 --layers auto --topk 16 --n-parallel 16 --threads "$THREADS" -o "$D/$name" --quiet "$@" || exit 1
  stamp "$name done"
}
made() {  # made FILE: a prompt stage whose file exists is done (remaking it would reorder the prompts under a
  # data stage that resumes by prompt index)
  [ -s "$D/$1" ] && { stamp "$1 exists: kept"; return 0; }; return 1
}
for stage in $STAGES; do
  case $stage in
    prompts)
      made prompts-v1.jsonl && continue
      stamp "prompts: synthesise 600 with smollm2-135m, add the long-answer subset, filter"
      ppow-train prompts --target smollm2-135m --n 600 --temp 1.0 --max-new 128 --n-parallel 64 --threads "$THREADS" \
        --include "$S/train-prompts.jsonl" --include-select long-answer --exclude "$S/specbench-dev.jsonl" \
        -o "$D/prompts-v1.jsonl" --quiet || exit 1
      stamp "prompts done: $(wc -l < "$D/prompts-v1.jsonl")" ;;
    prompts-math)  # the chat mix has no math word problems; without them a drafter forgets math (train README)
      made prompts-v1-math.jsonl && continue
      ppow-train prompts --include "$S/train-prompts.jsonl" --include-source '^gsm8k' --include-limit 500 \
        --exclude "$S/specbench-dev.jsonl" -o "$D/prompts-v1-math.jsonl" --quiet || exit 1 ;;
    prompts-translate)  # German-to-English requests: the target (Gemma, a base model) writes the German
      made prompts-v1-translate.jsonl && continue
      ppow-train prompts --target gemma3-270m --translation 800 --temp 0.8 --max-new 96 --n-parallel 32 \
        --threads "$THREADS" --exclude "$S/specbench-dev.jsonl" -o "$D/prompts-v1-translate.jsonl" --quiet || exit 1
      stamp "translation prompts done: $(wc -l < "$D/prompts-v1-translate.jsonl")" ;;
    gemma-translate) data gemma-v1-translate gemma3-270m qa prompts-v1-translate.jsonl ;;
    smollm2-translate) data smollm2-v1-translate smollm2-135m chat prompts-v1-translate.jsonl ;;
    gemma) data gemma-v1 gemma3-270m qa prompts-v1.jsonl ;;
    gemma-math) data gemma-v1-math gemma3-270m qa prompts-v1-math.jsonl ;;
    smollm2) data smollm2-v1 smollm2-135m chat prompts-v1.jsonl ;;
    smollm2-math) data smollm2-v1-math smollm2-135m chat prompts-v1-math.jsonl ;;
    gemma-t08) data gemma-v1-t08 gemma3-270m qa prompts-v1.jsonl --temp 0.8 --seed 1 ;;
    smollm2-t08) data smollm2-v1-t08 smollm2-135m chat prompts-v1.jsonl --temp 0.8 --seed 1 ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
stamp "all done"
