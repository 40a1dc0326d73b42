#!/usr/bin/env python3
"""Data engine throughput (issue 22): new tokens/s against sequences in flight and host threads, the
target on the GPU, features of three layers and top-16 as `ppow-train data` stores them. Torch-free.
A configuration ending in :device computes the softmax/top-k in the decode graph instead. Each configuration runs 2 waves of n_parallel prompts (or until --seconds, then cancels and counts
what finished). Prints one JSON line per configuration."""
import argparse
import json
import os
import threading
import time

from ppow import _core
from ppow.feature_layers import default_layers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--ngl", type=int, default=-1)
    ap.add_argument("--configs", default="16:0,64:0,256:0,64:1",
                    help="n_parallel:host_threads[:device], ... (device: top-k in the decode graph, --topk-on device)")
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=20)
    a = ap.parse_args()
    texts = []
    with open(a.prompts) as f:
        for line in f:
            o = json.loads(line)
            texts.append("Question: " + (o.get("text") or o["turns"][0]) + "\nAnswer:")
    for cfg in a.configs.split(","):
        parts = cfg.split(":")
        n_par, host = int(parts[0]), int(parts[1])
        on_device = len(parts) > 2 and parts[2] == "device"
        mp = _core.ModelParams()
        ctx_per_seq = 64 + a.max_new + 2
        mp.path, mp.n_threads, mp.n_parallel, mp.n_gpu_layers = a.target, os.cpu_count(), n_par, a.ngl
        mp.n_ctx, mp.n_batch, mp.batch_invariant = n_par * ctx_per_seq + 256, 512, False
        gen = _core.DataGen(mp)
        p = _core.DataGenParams()
        p.max_new, p.topk, p.temp, p.layers, p.host_threads = a.max_new, 16, 0.0, default_layers(gen.n_layer), host
        p.device_topk = on_device
        ids = [([gen.bos] + gen.tokenize(t, False)[-63:]) for t in texts[:2 * n_par]]
        done = dict(seq=0, new=0)

        def on_done(rec):
            done["seq"] += 1
            done["new"] += len(rec["tokens"]) - rec["prompt_len"]

        timer = threading.Timer(a.seconds, gen.cancel)
        timer.start()
        t0 = time.time()
        st, err = None, None
        try:
            st = gen.run(ids, p, ctx_per_seq, on_done)
        except Exception as e:  # cancelled at the time limit
            err = str(e)
        timer.cancel()
        dt = time.time() - t0
        row = dict(n_parallel=n_par, host_threads=host or os.cpu_count(), topk_on="device" if on_device else "host",
                   seconds=round(dt, 2), sequences=done["seq"],
                   new_tokens_finished=done["new"], new_tok_per_s_finished=round(done["new"] / dt, 1),
                   stopped=err or "complete")
        if st:
            row.update(decode_s=round(st["t_decode_ms"] / 1e3, 2), host_s=round(st["t_host_ms"] / 1e3, 2),
                       rows=st["rows"], decodes=st["decodes"])
        print(json.dumps(row), flush=True)
        del gen


if __name__ == "__main__":
    main()
