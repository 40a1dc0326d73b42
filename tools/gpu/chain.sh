#!/bin/bash
# Issue 21's chain on a warm device (after pipeline.sh built everything): Gemma data on the GPU from
# the carried prompts -> KD from the shipped drafter -> GGUF -> eval against the shipped drafter on a
# dev cache. Each stage its own process. DATA_S / KD_S bound the two long stages.
W=$HOME/w R=$HOME/w/results P=$HOME/w/payload G=$HOME/w/gemma.gguf
export PYTHONPATH="$W/site" PYTHONUNBUFFERED=1 PATH="$W/site/bin:$PATH"
t0=$(date +%s); stamp() { echo "[chain $(( $(date +%s) - t0 ))s] $*" | tee -a "$R/timeline.txt"; }
run() { local n=$1 to=$2; shift 2; stamp "$n"; timeout "$to" "$@" > "$R/$n.out" 2> >(tail -c 8000 > "$R/$n.err.tail"); stamp "$n rc=$?"; }
run devcache 40 python3 -m ppow.train.cli data --target $G --prompts $P/specbench-dev.jsonl --limit 96 --template qa --max-new 64 \
  --prompt-tail 0 --layers auto --n-parallel 96 -ngl -1 --host-threads 16 -o $W/devcache --quiet
run data ${DATA_S:-80} python3 -m ppow.train.cli data --target $G --prompts $P/prompts-fallback.jsonl --template qa --max-new 320 \
  --prompt-tail 256 --layers auto --topk 16 --n-parallel 128 -ngl -1 --host-threads 16 -o $W/cache --quiet
du -sb $W/cache > $R/cache-size.txt; python3 -c "import json;m=json.load(open('$W/cache/meta.json'));print(json.dumps(dict(shards=len(m['shards']),sequences=sum(s['sequences'] for s in m['shards']),positions=sum(s['positions'] for s in m['shards']),new_tokens=sum(s['new_tokens'] for s in m['shards']))))" > $R/cache-summary.json
run kd $(( ${KD_S:-50} + 60 )) python3 -m ppow.train.cli kd --cache $W/cache --allow-incomplete-cache --target $G --init $P/gemma-kd-hf \
  --drafter-kind feature --ttt-steps 3 --batch-size 32 --chunk-len 640 --lr 1e-4 --schedule constant --steps 100000 \
  --cpu-budget ${KD_S:-50} --threads 2 --precision bf16 --device cuda --save-every 100000 \
  --eval-cache $W/devcache --eval-every 200 --eval-limit 96 -o $W/kd --quiet
cp $W/kd/metrics.jsonl $R/kd-metrics.jsonl
run convert 40 python3 -m ppow_convert.cli drafter $W/kd/final --target $G --fc-type q8_0 -o $R/gemma3-270m-kd-gpu.gguf
run eval-new 60 python3 -m ppow.train.cli eval --drafter $W/kd/final --cache $W/devcache --target $G --k 1,2,4 -o $R/eval-new.json --quiet &
run eval-shipped 60 python3 -m ppow.train.cli eval --drafter $P/gemma-kd-hf --cache $W/devcache --target $G --k 1,2,4 -o $R/eval-shipped.json --quiet &
wait; stamp "chain done"; touch $W/chain-done
