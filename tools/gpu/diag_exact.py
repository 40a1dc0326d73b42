#!/usr/bin/env python3
"""Greedy exactness of ppow on this backend (issue 22): for each decode-width rule (llama.cpp's own
shapes; every decode padded to a fixed width W with verify batches capped at W), plain greedy and
speculative greedy (feature drafter, fixed k=2 and 4, auto, prompt lookup) on n dev prompts; counts the
outputs that differ from that rule's plain output and from the unpadded plain output, and median
tokens/s. Torch-free. Prints one JSON line per rule."""
import argparse
import json
import statistics
import time

import ppow


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--drafter", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--ngl", type=int, default=99)
    ap.add_argument("--widths", default="0,4,8")
    a = ap.parse_args()
    prompts = []
    with open(a.prompts) as f:
        rows = [json.loads(x) for x in f]
    step = max(1, len(rows) // a.n)
    prompts = ["Question: " + r["turns"][0] + "\nAnswer:" for r in rows[::step][:a.n]]
    configs = {"plain": dict(use_drafter=False), "k2": dict(draft_max=2), "k4": dict(draft_max=4),
               "auto": dict(draft_policy="auto", draft_max=8), "lookup": dict(use_drafter=False, lookup=True, draft_policy="auto")}
    base_plain = None
    for W in (int(w) for w in a.widths.split(",")):
        kw = dict(pad_rows=W, verify_batch_max=W) if W else dict(pad_rows=0)
        gen = ppow.Generator(a.target, a.drafter, n_ctx=2048, n_gpu_layers=a.ngl, n_gpu_layers_draft=a.ngl, **kw)
        out = {}
        for name, p in configs.items():
            gen.generate(prompts[0], n_predict=4, ignore_eos=True, **p)  # warm-up of this configuration
            toks, tps, exact = [], [], set()
            for q in prompts:
                g = gen.generate(q, n_predict=a.tokens, ignore_eos=True, **p)
                toks.append(list(g.tokens))
                tps.append(g.stats.tokens_per_second)
                exact.add((getattr(g.stats, "exact", None), getattr(g.stats, "exact_reason", "")))
            out[name] = dict(toks=toks, tok_s=round(statistics.median(tps), 1), tau=round(g.stats.tau, 2),
                             exact_flag=sorted(map(str, exact)))
        if base_plain is None:
            base_plain = out["plain"]["toks"]
        res = dict(width=W, n=len(prompts), tokens=a.tokens)
        for name, r in out.items():
            res[name] = dict(differ_from_plain=sum(x != y for x, y in zip(r["toks"], out["plain"]["toks"])),
                             differ_from_unpadded_plain=sum(x != y for x, y in zip(r["toks"], base_plain)),
                             tok_s=r["tok_s"], tau=r["tau"], exact_flag=r["exact_flag"])
        print(json.dumps(res), flush=True)
        gen.close()


if __name__ == "__main__":
    main()
