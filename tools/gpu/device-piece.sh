#!/bin/bash
# Device calls 2..: move one carried piece into place atomically (the pipeline waits for all of them).
W=$HOME/w
for f in "$@"; do
  if [ -d ".gpu-carry/$f" ]; then cp -r ".gpu-carry/$f/." "$W/payload/"; else
    cp ".gpu-carry/$f" "$W/pieces/.$f.tmp" && mv "$W/pieces/.$f.tmp" "$W/pieces/$f"; fi
done
tail -2 "$W/results/timeline.txt"
