#!/usr/bin/env python3
"""Which batch shapes give the same logits for the same row on this backend? (issue 22: exactness)

Torch-free, llama-cpp-python's low-level API only. After a prefix, the target's logits at positions
p0..p0+15 are computed several ways and compared bitwise with the one-row reference:
  ref1      one row per decode (plain decoding as llama.cpp does it)
  refW      one real row + W-1 throw-away rows of sequence 1 (all output rows): a plain step padded to W
  batch n   n consecutive rows of sequence 0 in one decode (a verify batch of n = k+1 rows)
  batch n/W n real rows + W-n throw-away rows (a verify batch padded to the same width W)
Prints one JSON object: for every comparison, rows compared, rows bitwise equal, argmax mismatches,
max |diff|. Run once per configuration (flash attention on/off; CUDA graphs via GGML_CUDA_DISABLE_GRAPHS).
"""
import argparse
import ctypes
import json
import os
import sys

import numpy as np
import llama_cpp as L


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--prompts", required=True, help="jsonl with turns/text: the first long one is used")
    ap.add_argument("--ngl", type=int, default=999)
    ap.add_argument("--fa", type=int, default=-1, help="flash_attn_type: -1 auto, 0 off, 1 on")
    ap.add_argument("--prefix", type=int, default=200)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--widths", default="2,4,8,16")
    a = ap.parse_args()

    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.n_gpu_layers = a.ngl
    model = L.llama_model_load_from_file(a.target.encode(), mp)
    vocab = L.llama_model_get_vocab(model)
    nv = L.llama_vocab_n_tokens(vocab)
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max, cp.kv_unified = 2048, 512, 512, 2, True
    cp.flash_attn_type = a.fa
    cp.n_threads = cp.n_threads_batch = os.cpu_count() or 4
    ctx = L.llama_init_from_model(model, cp)
    mem = L.llama_get_memory(ctx)

    buf = (L.llama_token * 16384)()
    toks = []
    with open(a.prompts) as f:
        for line in f:  # the first prompt long enough
            o = json.loads(line)
            text = " ".join(o.get("turns") or [o.get("text", "")]).encode()
            n = L.llama_tokenize(vocab, text, len(text), buf, len(buf), True, False)
            if n >= a.prefix + a.rows:
                toks = list(buf[:n])
                break
    assert toks, "no prompt is long enough"
    p0, R = a.prefix, a.rows
    cont = toks[p0:p0 + R]
    batch = L.llama_batch_init(512, 0, 1)

    def decode(rows):
        """rows: list of (token, pos, seq). Every row is an output row. Returns logits [len(rows), nv]."""
        batch.n_tokens = len(rows)
        for i, (t, p, s) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, p, 1
            batch.seq_id[i][0], batch.logits[i] = s, True
        rc = L.llama_decode(ctx, batch)
        assert rc == 0, rc
        return np.stack([np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(nv,)).copy()
                         for i in range(len(rows))])

    L.llama_memory_clear(mem, True)
    batch.n_tokens = p0
    for i in range(p0):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = toks[i], i, 1, 0, i == p0 - 1
    assert L.llama_decode(ctx, batch) == 0

    def reset():
        L.llama_memory_seq_rm(mem, 0, p0, -1)
        L.llama_memory_seq_rm(mem, 1, -1, -1)

    dummy = lambda j: (toks[j % p0], j, 1)  # noqa: E731 throw-away rows: another sequence, own positions

    def run_singles(W):
        reset()
        out = []
        for j in range(R):
            lg = decode([(cont[j], p0 + j, 0)] + [dummy(k) for k in range(W - 1)])
            out.append(lg[0])
            L.llama_memory_seq_rm(mem, 1, -1, -1)
        return np.stack(out)

    def run_batch(nr, W):
        reset()
        res = []
        for s in range(0, R - nr + 1, nr):
            lg = decode([(cont[s + j], p0 + s + j, 0) for j in range(nr)] + [dummy(k) for k in range(max(0, W - nr))])
            res.append(lg[:nr])
            L.llama_memory_seq_rm(mem, 1, -1, -1)
        return np.concatenate(res)

    def cmp(x, ref):
        m = len(x)
        return dict(rows=m, bitwise_equal=int(sum(np.array_equal(x[i], ref[i]) for i in range(m))),
                    argmax_mismatch=int(sum(int(x[i].argmax()) != int(ref[i].argmax()) for i in range(m))),
                    max_abs_diff=float(np.abs(x - ref[:m]).max()))

    widths = [int(w) for w in a.widths.split(",")]
    out = dict(config=dict(fa=a.fa, graphs_disabled=os.environ.get("GGML_CUDA_DISABLE_GRAPHS", ""), ngl=a.ngl,
                           prefix=p0, rows=R), results={})
    ref1 = run_singles(1)
    out["results"]["ref1 again"] = cmp(run_singles(1), ref1)  # run-to-run determinism
    for nr in range(2, R + 1):
        out["results"][f"batch {nr} vs ref1"] = cmp(run_batch(nr, 0), ref1)
    for W in widths:
        refW = run_singles(W)
        out["results"][f"ref{W} vs ref1"] = cmp(refW, ref1)
        for nr in range(2, W + 1):
            out["results"][f"batch {nr}/{W} vs ref{W}"] = cmp(run_batch(nr, W), refW)
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
