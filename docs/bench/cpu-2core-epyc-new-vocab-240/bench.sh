#!/bin/bash
# One interleaved run on all 240 dev prompts: plain, lookup, the shipped KD drafter and the new one under
# auto, each with and without lookup (auto+lookup with a drafter is ppow-run's default configuration).
. /work/main/.venv/bin/activate
cd /work/main
NEW=${1:?new drafter gguf}; OUT=${2:?out dir}
ppow-bench --prompts ../shared/data/specbench-dev.jsonl -n 32 --drafter kd-shipped=python/ppow/drafters/gemma3-270m-kd.gguf \
  --drafter ppow-shipped=python/ppow/drafters/gemma3-270m-ppow.gguf --drafter new8k=$NEW --drafter new16k=/work/runs/s4/kd16k.gguf --k '' --auto --lookup --peers none --threads 2 -o "$OUT"
