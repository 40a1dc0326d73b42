#!/bin/bash
# Here (CPU): lay out what the GPU session carries, in .gpu-carry/ (ignored through .git/info/exclude):
#   p1/   trimmed llama-cpp-python sdist, wheels, prompt files, the shipped Gemma KD drafter (GGUF)
#   p2/   the same drafter as a Hugging Face EAGLE-3 dir (the KD start on the device)
#   gemma.0..4, smol.0..1   the two targets cut to fit one call each (64 MiB per call with the tree)
# Usage: tools/gpu/prepare.sh SDIST_TRIM_TGZ WHEEL_DIR  (see ../shared/gpu.md for the trimming)
set -euo pipefail
cd "$(dirname "$0")/../.."
SDIST=$1 WHEELS=$2 SH=../shared/data
grep -qx ".gpu-carry/" .git/info/exclude || printf ".gpu-carry/\n.gpu-away/\n" >> .git/info/exclude
rm -rf .gpu-carry && mkdir -p .gpu-carry/p1 .gpu-carry/p2
cp "$SDIST" .gpu-carry/p1/llama_cpp_python-0.3.36-trim.tar.gz
cp "$WHEELS"/diskcache-5.6.3-py3-none-any.whl "$WHEELS"/gguf-0.19.0-py3-none-any.whl .gpu-carry/p1/
cp $SH/specbench-dev.jsonl $SH/train-prompts.jsonl .gpu-carry/p1/
cp python/ppow/drafters/gemma3-270m-kd.gguf .gpu-carry/p1/
G=$(python -c "from ppow.models import resolve_target; print(resolve_target('gemma3-270m'))")
S=$(python -c "from ppow.models import resolve_target; print(resolve_target('smollm2-135m'))")
ppow-train prompts --include $SH/train-prompts.jsonl --include-select long-answer --exclude $SH/specbench-dev.jsonl \
  -o .gpu-carry/p1/prompts-fallback.jsonl --quiet
ppow-convert drafter python/ppow/drafters/gemma3-270m-kd.gguf --to hf --target "$G" -o .gpu-carry/p2/gemma-kd-hf
split -n 5 -d -a 1 "$G" .gpu-carry/gemma.
split -n 2 -d -a 1 "$S" .gpu-carry/smol.
du -sh .gpu-carry/*
