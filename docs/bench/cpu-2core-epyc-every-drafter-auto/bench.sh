#!/bin/bash
# Session 7 quiet benchmark (issues 21, 22, 23): every drafter kind under auto, alone and with lookup,
# both targets, the engine of this session (probe catch-up capped for standalone drafters), all other
# jobs paused (kill -STOP) by the caller. 39 dev prompts (3 per category), 48 greedy tokens.
set -e
. /work/main/.venv/bin/activate
cd /work/main
OUT=${1:-/work/runs/s7/bench}
D=python/ppow/drafters
ppow-bench --prompts ../shared/data/specbench-dev.jsonl --per-category 3 -n 48 \
  --drafter kd=$D/gemma3-270m-kd.gguf --drafter ppow=$D/gemma3-270m-ppow.gguf \
  --drafter useless=/work/runs/h22/useless-standalone.gguf \
  --k '' --auto --lookup --peers none --threads 2 -o $OUT/gemma
ppow-bench --prompts ../shared/data/specbench-dev.jsonl --target smollm2-135m --template chat --per-category 3 -n 48 \
  --drafter kd=$D/smollm2-135m-kd.gguf --drafter ppow=$D/smollm2-135m-ppow.gguf \
  --drafter useless=/work/runs/s7/useless-smol.gguf \
  --k '' --auto --lookup --peers none --threads 2 -o $OUT/smol
