#!/bin/bash
# Before / after each device call: the tracked files the GPU check does not need (shipped drafters,
# bench reports, fuzz regressions: ~67 MB) leave the working tree so a call fits 64 MiB; `back` returns them.
cd "$(dirname "$0")/../.."
if [ "${1:-away}" = away ]; then
  mkdir -p .gpu-away/drafters .gpu-away/docs .gpu-away/tests
  mv python/ppow/drafters/*.gguf .gpu-away/drafters/ 2>/dev/null; mv docs/bench .gpu-away/docs/ 2>/dev/null
  mv tests/regressions .gpu-away/tests/ 2>/dev/null; true
else
  mv .gpu-away/drafters/*.gguf python/ppow/drafters/ 2>/dev/null; mv .gpu-away/docs/bench docs/ 2>/dev/null
  mv .gpu-away/tests/regressions tests/ 2>/dev/null; true
fi
git status --short | grep "^ D" | head -3
