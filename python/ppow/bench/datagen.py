"""Throughput of the data engine (`ppow-train data`) against ppow's plain single-sequence decoding.

    python -m ppow.bench.datagen --prompts ../shared/data/train-prompts.jsonl --n 64 \
        --n-parallel 1,8,16,32 --max-new 128 -o report/datagen.json

Runs, in one process and one after the other on the same prompts: ppow plain decoding (a Generator,
one sequence at a time, greedy, `--max-new` tokens each; tokens/s of generation as ppow-run reports
it), then the data engine at each number of sequences in flight (features of three layers and
top-k included, as `ppow-train data` writes them), then plain decoding again, so a drift of the
machine shows; and the cost of hidden-state capture on a decode. Generated tokens per second are wall-clock, prompt processing included for the data
engine (it is part of making data) and excluded for plain decoding (as users read tokens/s).
"""
from __future__ import annotations

import argparse
import json
import platform
import time


def plain_rate(target, prompts, max_new, threads):
    import ppow

    with ppow.Generator(target, n_ctx=1024, n_threads=threads) as g:
        n = ms = 0.0
        for p in prompts:
            out = g.generate(p, n_predict=max_new, ignore_eos=True)
            n += out.stats.n_generated
            ms += out.stats.t_total_ms
    return 1000.0 * n / ms


def capture_cost(target, prompt, layers, threads, reps=15):
    """Median ms of decoding a prompt (prefix batch + a 1- or 4-row scored batch) without and with
    hidden-state capture at `layers`, interleaved."""
    import statistics

    import ppow

    out = {}
    with ppow.Generator(target, n_ctx=1024, n_threads=threads) as g:
        ids = g.tokenize(prompt)
        other = [ids[0], ids[-1]]  # resets the cache so every timed call decodes all of `ids`
        for n_last in (1, 4):
            t_off, t_on = [], []
            for rep in range(reps + 1):
                for on in (False, True):
                    g.score(other, 1)
                    t0 = time.perf_counter()
                    if on:
                        g.features(ids, layers=layers, n_last=n_last)
                    else:
                        g.score(ids, n_last)
                    if rep:  # the first round warms up both graphs
                        (t_on if on else t_off).append(1000 * (time.perf_counter() - t0))
            off, on = statistics.median(t_off), statistics.median(t_on)
            out[f"n_last={n_last}"] = dict(prompt_tokens=len(ids), ms_without=off, ms_with=on, overhead=on / off - 1)
    return out


def exactness(target, prompt_ids, batched, max_new, threads):
    """Where sequences generated n_parallel at a time leave ppow's one-at-a-time greedy decoding
    (CPU kernels switch with the batch size, so near-ties can flip): per prompt, the first
    generated position that differs, or None."""
    import ppow

    first_diff = []
    with ppow.Generator(target, n_ctx=1024, n_threads=threads) as g:
        for i, ids in enumerate(prompt_ids):
            ref = list(ids) + g.generate(list(ids), n_predict=max_new).tokens
            got = batched[i]
            n = min(len(ref), len(got))
            d = next((j for j in range(len(ids), n) if ref[j] != got[j]), None)
            if d is None and len(ref) != len(got):
                d = n
            first_diff.append(None if d is None else d - len(ids))
    return first_diff


def engine_rate(target, prompt_ids, n_parallel, max_new, topk, layers, threads, keep=None, flash_attn="auto"):
    from ppow import _core

    mp = _core.ModelParams()
    per = max(len(p) for p in prompt_ids) + max_new + 1
    mp.path, mp.n_threads, mp.n_parallel, mp.batch_invariant = target, threads, n_parallel, False
    mp.n_ctx, mp.n_batch, mp.flash_attn = n_parallel * per + 256, 512, flash_attn
    gen = _core.DataGen(mp)
    params = _core.DataGenParams()
    params.max_new, params.topk, params.layers = max_new, topk, layers
    t0 = time.perf_counter()
    st = gen.run(prompt_ids, params, per, (lambda rec: keep.__setitem__(int(rec["index"]), rec["tokens"].tolist()))
                 if keep is not None else (lambda rec: None))
    seconds = time.perf_counter() - t0
    return dict(n_parallel=n_parallel, new_tokens=st["new_tokens"], positions=st["positions"], seconds=seconds,
                tokens_per_second=st["new_tokens"] / seconds, decode_share=st["t_decode_ms"] / 1000 / seconds)


def main(argv=None):
    import ppow
    from ppow.feature_layers import default_layers
    from ppow.models import resolve_target
    from ppow.prompt_files import read_prompts, tail_ids
    from ppow.templates import TEMPLATES

    ap = argparse.ArgumentParser(prog="python -m ppow.bench.datagen", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=None, help="GGUF target or a name (default: the packaged Gemma 3 270M)")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--template", choices=sorted(TEMPLATES), default="qa")
    ap.add_argument("--n", type=int, default=64, help="prompts (the same ones for every system)")
    ap.add_argument("--plain-n", type=int, default=16, help="prompts for plain decoding (each run, before and after)")
    ap.add_argument("--n-parallel", default="1,8,16,32")
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--prompt-tail", type=int, default=64)
    ap.add_argument("--topk", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flash-attn", default="auto", help="the data engine's attention: auto, off, or both (auto,off)")
    ap.add_argument("--exact-n", type=int, default=16,
                    help="compare this many batched trajectories with one-at-a-time greedy decoding")
    ap.add_argument("-o", "--out", default=None, help="write the JSON report here too")
    args = ap.parse_args(argv)

    target = resolve_target(args.target)
    prompts = [p["text"] for p in read_prompts(args.prompts, args.n, 0, args.template, target)]
    with ppow.Generator(target, n_ctx=64, n_threads=1) as g:
        n_layer = g.n_layer
        ids = [tail_ids(g.tokenize(p), g._engine.bos, args.prompt_tail) for p in prompts]
    layers = default_layers(n_layer)
    capture = capture_cost(target, prompts[0], layers, args.threads)
    print(json.dumps(dict(capture=capture)), flush=True)
    rows = [dict(system="plain (before)", tokens_per_second=plain_rate(target, prompts[:args.plain_n], args.max_new,
                                                                        args.threads))]
    print(json.dumps(rows[-1]), flush=True)
    kept = {}
    for fa in args.flash_attn.split(","):
        for npar in (int(x) for x in args.n_parallel.split(",")):
            keep = kept if npar == max(int(x) for x in args.n_parallel.split(",")) else None
            name = f"data engine, {npar} in flight" + ("" if fa == "auto" else f", flash attention {fa}")
            rows.append(dict(system=name, **engine_rate(target, ids, npar, args.max_new, args.topk, layers,
                                                        args.threads, keep, fa)))
            print(json.dumps(rows[-1]), flush=True)
    rows.append(dict(system="plain (after)", tokens_per_second=plain_rate(target, prompts[:args.plain_n], args.max_new,
                                                                         args.threads)))
    print(json.dumps(rows[-1]), flush=True)
    diffs = exactness(target, ids[:args.exact_n], kept, args.max_new, args.threads) if args.exact_n else []
    plain = (rows[0]["tokens_per_second"] + rows[-1]["tokens_per_second"]) / 2
    for r in rows:
        r["vs_plain"] = r["tokens_per_second"] / plain
    report = dict(machine=dict(cpu=platform.processor() or platform.machine(), python=platform.python_version()),
                  settings=dict(vars(args), layers=layers, target=target), rows=rows, capture=capture,
                  exactness=dict(n_prompts=len(diffs), n_parallel=max(int(x) for x in args.n_parallel.split(",")),
                                 diverged=sum(d is not None for d in diffs), first_diff=diffs))
    print("| system | new tokens/s | vs plain |\n|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['tokens_per_second']:.1f} | {r['vs_plain']:.2f}x |")
    for k, c in capture.items():
        print(f"capture of layers {layers}, {c['prompt_tokens']}-token prompt, {k}: {c['ms_without']:.1f} ms -> "
              f"{c['ms_with']:.1f} ms ({100 * c['overhead']:+.1f} %)")
    if diffs:
        print(f"exactness: {sum(d is not None for d in diffs)} of {len(diffs)} sequences generated "
              f"{report['exactness']['n_parallel']} in flight left one-at-a-time greedy decoding; first differing "
              f"generated positions: {sorted(d for d in diffs if d is not None)}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
