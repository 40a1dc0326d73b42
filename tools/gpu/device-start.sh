#!/bin/bash
# Device call 1 (run from the repository root on the device): unpack payload p1, snapshot the tree,
# set the deadline (DEADLINE_S seconds from now, rewritable later), start pipeline.sh in the background.
W=$HOME/w
rm -rf "$W"; mkdir -p "$W/payload" "$W/pieces" "$W/results" "$W/ppow"
cp -r .gpu-carry/p1/. "$W/payload/"
tar --exclude=./.gpu-carry --exclude=./.git --exclude=./build -cf - . | tar -xf - -C "$W/ppow"
echo $(( $(date +%s) + ${DEADLINE_S:-600} )) > "$W/deadline"
(setsid nohup bash "$W/ppow/tools/gpu/pipeline.sh" > "$W/pipeline.log" 2>&1 &)
sleep 2; cat "$W/results/timeline.txt"
