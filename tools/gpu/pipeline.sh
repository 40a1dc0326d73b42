#!/bin/bash
# The GPU session's device side, started once in the background by tools/gpu/device-start.sh:
# build llama-cpp-python 0.3.36 with CUDA and ppow against it (one --target dir), assemble the models
# from the pieces later calls drop into $W/pieces, then run, most valuable first, each step bounded by
# the deadline in $W/deadline (epoch seconds):
#   0 numpy       numpy before a CUDA Generator: which variant crashes, and where (tools/gpu/diag_numpy.py)
#   1 invariance  which batch shapes give bitwise-equal rows (tools/gpu/diag_invariance.py; RUN_INVARIANCE=1)
#   2 exact       ppow greedy speculative vs plain on the GPU, fixed-width padding on/off (diag_exact.py)
#   3 torch       torch beside ppow: crash variants, ldd, candidate fixes (diag_torch.py)
#   4 datagen     data engine tokens/s by sequences in flight, host vs device top-k (diag_datagen.py)
#   5 chain       issue 21 on the GPU: prompts (SmolLM2 self-synthesis) -> Gemma data -> KD from the
#                 shipped drafter -> eval on the dev cache -> GGUF, each stage its own process
#   6 step-timing seconds per update of KD, PPOW expected and PPOW sampled (tools/ppow-step-timing.py)
# (pip --target installs no console scripts there: the stages run as python3 -m ...)
# Results go to $W/results (each step's output as soon as it exists); tools/gpu/device-poll.sh packs them.
W=${W:-$HOME/w}
R=$W/results
mkdir -p "$R" "$W/pieces"
cd "$W" || exit 1
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$R/timeline.txt"; }
left() { echo $(( $(cat "$W/deadline" 2>/dev/null || echo 0) - $(date +%s) )); }
stamp "start $(date -u +%FT%TZ) nproc=$(nproc)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$R/nvidia-smi.csv" 2>&1
(cat /etc/os-release | head -2; ldd --version | head -1; python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)") > "$R/image.txt" 2>&1

# 1. llama-cpp-python with CUDA (sm_90 only, no llava/mtmd: ~5 min on 16 cores)
tar xzf payload/llama_cpp_python-0.3.36-trim.tar.gz
stamp "build llama-cpp-python (CUDA)"
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=off" CMAKE_BUILD_PARALLEL_LEVEL=16 MAX_JOBS=16 \
  python3 -m pip install --no-build-isolation --no-deps --no-index --target "$W/site" ./llama_cpp_python-0.3.36 \
  payload/diskcache-5.6.3-py3-none-any.whl payload/gguf-0.19.0-py3-none-any.whl > "$R/build-llama.log" 2>&1
rc=$?; stamp "llama-cpp-python rc=$rc"; [ $rc = 0 ] || { tail -50 "$R/build-llama.log" > "$R/build-llama.tail"; touch "$W/done"; exit 1; }
stamp "build ppow"
PYTHONPATH="$W/site" CMAKE_PREFIX_PATH="$W/site" CMAKE_BUILD_PARALLEL_LEVEL=16 \
  python3 -m pip install --no-build-isolation --no-deps --no-index --target "$W/site" "$W/ppow" > "$R/build-ppow.log" 2>&1
rc=$?; stamp "ppow rc=$rc"; [ $rc = 0 ] || { tail -50 "$R/build-ppow.log" > "$R/build-ppow.tail"; touch "$W/done"; exit 1; }
export PYTHONPATH="$W/site" PYTHONUNBUFFERED=1 PATH="$W/site/bin:$PATH"
python3 -c "from ppow import _core; import json; print(json.dumps(_core.build_info()))" > "$R/build-info.json" 2>&1
cc -shared -fPIC -O1 -o "$W/segv_backtrace.so" "$W/ppow/tools/gpu/segv_backtrace.c" -ldl 2> "$R/segv-build.err"

# the models, from the pieces the next calls bring
while [ "$(ls pieces/gemma.* 2>/dev/null | wc -l)" -lt 5 ] || [ "$(ls pieces/smol.* 2>/dev/null | wc -l)" -lt 2 ]; do sleep 1; done
sleep 2
cat pieces/gemma.0 pieces/gemma.1 pieces/gemma.2 pieces/gemma.3 pieces/gemma.4 > gemma.gguf
cat pieces/smol.0 pieces/smol.1 > smol.gguf
sha256sum gemma.gguf smol.gguf > "$R/models.sha256"
stamp "models assembled"
G=$W/gemma.gguf S=$W/smol.gguf P=$W/payload T=$W/ppow/tools/gpu

step() {  # step NAME MIN_SECONDS_LEFT TIMEOUT CMD...: skipped when the deadline is too close
  local name=$1 need=$2 to=$3; shift 3
  if [ "$(left)" -lt "$need" ]; then stamp "skip $name ($(left)s left)"; return 1; fi
  stamp "$name"; timeout "$to" "$@" > "$R/$name.out" 2> "$R/$name.err"; local rc=$?
  tail -c 20000 "$R/$name.err" > "$R/$name.err.tail"; rm -f "$R/$name.err"
  stamp "$name rc=$rc"; return $rc
}

# 0. numpy before a CUDA Generator segfaulted (2026-12-04): native + Python backtraces of each variant
step numpy 150 300 python3 $T/diag_numpy.py --target $G --preload $W/segv_backtrace.so --timeout 40

if [ -n "${RUN_INVARIANCE:-}" ]; then  # measured on 2026-12-04 (docs/bench/gpu-h200-2026-12-04): off by default
for fa in -1 0; do for graphs in on off; do
  env_g=""; [ $graphs = off ] && env_g="GGML_CUDA_DISABLE_GRAPHS=1"
  step "invariance-fa$fa-graphs-$graphs" 60 60 env $env_g python3 $T/diag_invariance.py --target $G \
    --prompts $P/specbench-dev.jsonl --fa $fa --prefix 200 --rows 16 --widths 2,4,8,16
done; done
fi
step exact 120 90 python3 $T/diag_exact.py --target $G --drafter $P/gemma3-270m-kd.gguf --prompts $P/specbench-dev.jsonl --n 24
step torch 120 150 python3 $T/diag_torch.py --target $G --timeout 40
step datagen 260 170 python3 $T/diag_datagen.py --target $G --prompts $P/specbench-dev.jsonl --configs 16:0,64:0,256:0,16:0:device,64:0:device,256:0:device --seconds 15

# 5. the issue-21 chain, every stage in its own process (torch and a CUDA ppow not yet in one)
step prompts 330 90 python3 -m ppow.train.cli prompts --target $S -ngl -1 --n 3000 --n-parallel 256 --max-new 128 \
  --include $P/train-prompts.jsonl --include-select long-answer --exclude $P/specbench-dev.jsonl -o $W/prompts.jsonl --quiet
[ -f $W/prompts.jsonl ] && cp $W/prompts.jsonl.report.json $R/ || cp $P/prompts-fallback.jsonl $W/prompts.jsonl
step devcache 300 60 python3 -m ppow.train.cli data --target $G --prompts $P/specbench-dev.jsonl --template qa --max-new 64 \
  --prompt-tail 0 --layers auto --n-parallel 64 -ngl -1 --host-threads 16 -o $W/devcache --quiet
DATA_S=$(( $(left) - 220 )); [ $DATA_S -gt 170 ] && DATA_S=170
if [ $DATA_S -gt 40 ]; then
  step data $DATA_S $DATA_S python3 -m ppow.train.cli data --target $G --prompts $W/prompts.jsonl --template qa --max-new 320 \
    --prompt-tail 256 --layers auto --topk 16 --n-parallel 128 -ngl -1 --host-threads 16 -o $W/cache --quiet
  du -sb $W/cache > $R/cache-size.txt; cat $W/cache/meta.json | head -c 4000 > $R/cache-meta.json
  KD_S=$(( $(left) - 90 )); [ $KD_S -gt 130 ] && KD_S=130
  step kd 60 $(( KD_S + 40 )) python3 -m ppow.train.cli kd --cache $W/cache --allow-incomplete-cache --target $G --init $P/gemma-kd-hf \
    --drafter-kind feature --ttt-steps 3 --batch-size 32 --chunk-len 640 --lr 1e-4 --schedule constant --steps 100000 \
    --cpu-budget $KD_S --precision bf16 --device cuda --save-every 100000 \
    --eval-cache $W/devcache --eval-every 200 --eval-limit 96 -o $W/kd --quiet
  cp $W/kd/metrics.jsonl $R/kd-metrics.jsonl 2>/dev/null
  step convert 30 60 python3 -m ppow_convert.cli drafter $W/kd/final --target $G --fc-type q8_0 -o $R/gemma3-270m-kd-gpu.gguf
  step eval-new 40 120 python3 -m ppow.train.cli eval --drafter $W/kd/final --cache $W/devcache --target $G --k 1,2,4 -o $R/eval-new.json --quiet
  step eval-shipped 30 120 python3 -m ppow.train.cli eval --drafter $P/gemma-kd-hf --cache $W/devcache --target $G --k 1,2,4 -o $R/eval-shipped.json --quiet
fi
# 6. issue 23 on the GPU: seconds per update of KD, PPOW expected and PPOW sampled (torch only, no Generator)
step step-timing 60 120 python3 $W/ppow/tools/ppow-step-timing.py --device cuda --steps 12 -o $R/step-timing.json
stamp "done"
touch "$W/done"
