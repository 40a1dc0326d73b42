#!/bin/bash
# issue 22: ppow's exact plain decoding vs llama-bench by depth, both targets; every ppow-train job paused.
. /work/main/.venv/bin/activate
cd /work/main
LB=/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/build-bench/bin/llama-bench
for t in smollm2-135m gemma3-270m; do
  python -m ppow.bench.depth --target $t --depths 0,256,512,1024,2048 --repeats 3 --threads 2 --compare-pad \
    --llama-bench $LB -o /work/runs/s5/depth-$t.json
done
