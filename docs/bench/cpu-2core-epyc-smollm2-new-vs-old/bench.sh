#!/bin/bash
# Issue 21, session 8: SmolLM2's new drafter pair (the annealed KD drafter and its PPOW twin) against the
# shipped pair, on the 2-core AMD EPYC, every other job on the machine paused (kill -STOP) by the caller.
#  all240: every dev prompt, 32 greedy tokens: plain, lookup alone, and each PPOW drafter under auto
#          alone and beside lookup (ppow-run's default configuration): the end-to-end measure.
#  k1:     39 prompts (3 per category), 48 tokens: all four drafters at a fixed one-token window (where
#          acceptance shows in speed) and under auto.
set -e
. /work/main/.venv/bin/activate
cd /work/main
OUT=${1:-docs/bench/cpu-2core-epyc-smollm2-new-vs-old}
# As run: the new pair from the training machine's run dir, the previous pair from the tree at commit
# 8722f99 (python/ppow/drafters before this session replaced the SmolLM2 files; to rerun now, write them
# out with `git show 8722f99:python/ppow/drafters/smollm2-135m-kd.gguf > DIR/...` and pass OLD=DIR).
NEW=${NEW:-/work/runs/s8}
D=${OLD:-python/ppow/drafters}
ppow-bench --prompts ../shared/data/specbench-dev.jsonl --target smollm2-135m --template chat -n 32 \
  --drafter ppow-new=$NEW/smollm2-135m-ppow-new.gguf --drafter ppow-old=$D/smollm2-135m-ppow.gguf \
  --k '' --auto --lookup --peers none --threads 2 -o $OUT/all240
ppow-bench --prompts ../shared/data/specbench-dev.jsonl --target smollm2-135m --template chat --per-category 3 -n 48 \
  --drafter kd-new=$NEW/smollm2-135m-kd-new.gguf --drafter ppow-new=$NEW/smollm2-135m-ppow-new.gguf \
  --drafter kd-old=$D/smollm2-135m-kd.gguf --drafter ppow-old=$D/smollm2-135m-ppow.gguf \
  --k 1 --auto --peers none --threads 2 -o $OUT/k1
