#!/bin/bash
# Device poll calls: wait, show the timeline, pack everything measured so far into $OUT.
W=$HOME/w
sleep "${1:-20}"
tail -4 "$W/results/timeline.txt"; tail -2 "$W/pipeline.log"
tar czf "$OUT/results.tgz" -C "$W" results 2>/dev/null; ls "$W/done" 2>/dev/null
