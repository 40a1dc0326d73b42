"""Plain decoding by context depth: ppow (exact, each attention mode) against llama.cpp's llama-bench.

    python -m ppow.bench.depth --target smollm2-135m --depths 0,512,1024,2048 \
        --llama-bench /path/to/llama.cpp/build/bin/llama-bench -o report/depth.json

For each depth d, ppow decodes 64 tokens greedily after a d-token context (a fixed synthetic text, so
every system and depth sees the same tokens), with batch_invariant on (the exact mode every ppow
speculative run uses), once per flash-attention mode; llama-bench runs `-n 64 -p 0 -d d` with the
same thread count and `--repack 0` (ppow loads weights without CPU repacking: repacked kernels
switch with the batch size, and llama.cpp 0.3.36's AMX buffer type crashed at depth on a Sapphire
Rapids Xeon), once with its default flash attention and once with it off. Systems alternate within
each repeat, so a drift of the machine shows in all of them. Tokens/s exclude the prompt, as
llama-bench's tg figures do.

How to build llama-bench (CI never does): ppow/bench/peer_llamacpp_bin.py's docstring (the same build
makes llama-speculative-simple and llama-bench).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from unittest import mock

N_NEW = 64
WORDS = ("the of and a to in is was for on as with by he at from his an were are which this be or has had "
         "not first one their its new after who they have her she two been other when there all").split()


def context_text(n_words=4000):
    return " ".join(WORDS[(i * 7) % len(WORDS)] + str(i % 10) for i in range(n_words))


def ppow_rate(g, ids, depth):
    out = g.generate(ids[:max(depth, 1)], n_predict=N_NEW, ignore_eos=True, use_drafter=False)
    return out.stats.tokens_per_second  # the generation loop only (t_total_ms starts after the prompt)


def llama_lib_env():
    """llama-bench runs on the llama.cpp libraries ppow links (llama-cpp-python's), so both sides
    multiply with the same kernels whatever build the binary came from."""
    import llama_cpp

    env = dict(os.environ)
    lib = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    env["LD_LIBRARY_PATH"] = lib + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def llama_bench_rate(binary, target, depth, threads, flash):
    cmd = [binary, "-m", target, "-t", str(threads), "-n", str(N_NEW), "-p", "0", "-d", str(depth), "-r", "1",
           "--repack", "0", "-fa", flash, "-o", "json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=llama_lib_env())
    if res.returncode != 0:
        raise SystemExit(f"llama-bench failed (code {res.returncode}): {' '.join(cmd)}\n{res.stderr[-2000:]}")
    return float(json.loads(res.stdout)[0]["avg_ts"])


def main(argv=None):
    import ppow
    from ppow.models import resolve_target

    ap = argparse.ArgumentParser(prog="python -m ppow.bench.depth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=None, help="GGUF target or a name (default: the packaged Gemma 3 270M)")
    ap.add_argument("--depths", default="0,256,512,1024,2048")
    ap.add_argument("--repeats", type=int, default=3, help="runs per system and depth (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-bench", default=None, help="path of llama.cpp's llama-bench (optional peer; run on "
                    "llama-cpp-python's libraries through LD_LIBRARY_PATH)")
    ap.add_argument("--compare-pad", action="store_true",
                    help="also ppow fa=auto with the padding-row rule instead of ggml's use_ref switch")
    ap.add_argument("-o", "--out", default=None)
    args = ap.parse_args(argv)
    target = resolve_target(args.target)
    depths = [int(d) for d in args.depths.split(",")]

    def gen(fa, pad=False):
        # pad: the padding-row rule instead of ggml's use_ref switch (PPOW_CPU_REF=0, read at construction)
        with mock.patch.dict(os.environ, {"PPOW_CPU_REF": "0"} if pad else {}):
            return ppow.Generator(target, n_ctx=max(depths) + N_NEW + 16, n_threads=args.threads, flash_attn=fa)

    gens = {"ppow fa=auto": gen("auto"), "ppow fa=off": gen("off")}
    if args.compare_pad:
        gens["ppow fa=auto pad"] = gen("auto", pad=True)
    ids = next(iter(gens.values())).tokenize(context_text())
    if len(ids) < max(depths):
        raise SystemExit(f"the synthetic context has {len(ids)} tokens, fewer than depth {max(depths)}")
    systems = dict(gens)
    if args.llama_bench:
        systems["llama.cpp fa=auto"] = "auto"
        systems["llama.cpp fa=off"] = "off"
    rows = []
    for d in depths:
        runs = {name: [] for name in systems}
        for g in gens.values():
            ppow_rate(g, ids, d)  # warm-up: the context's prompt, caches
        for _ in range(args.repeats):
            for name, sysm in systems.items():
                rate = (ppow_rate(sysm, ids, d) if not isinstance(sysm, str)
                        else llama_bench_rate(args.llama_bench, target, d, args.threads, sysm))
                runs[name].append(rate)
        row = {"depth": d, **{name: statistics.median(r) for name, r in runs.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    backends = {name: {k: g.backend[k] for k in ("pads_single", "ref_attention")} for name, g in gens.items()}
    for g in gens.values():
        g.close()
    report = {"target": target, "threads": args.threads, "new_tokens": N_NEW, "repeats": args.repeats,
              "machine": platform.processor() or platform.machine(), "rows": rows,
              "ppow_backend": backends}
    names = list(systems)
    ratios = " | ppow default / llama.cpp default | ppow best / llama.cpp default |"
    print("| depth | " + " | ".join(names) + (ratios if args.llama_bench else " |"))
    print("|---" * (len(names) + 1 + 2 * bool(args.llama_bench)) + "|")
    for r in rows:
        cells = [f"{r[n]:.1f}" for n in names]
        if args.llama_bench:
            cells.append(f"{r['ppow fa=auto'] / r['llama.cpp fa=auto']:.2f}x")
            cells.append(f"{max(r['ppow fa=auto'], r['ppow fa=off']) / r['llama.cpp fa=auto']:.2f}x")
        print(f"| {r['depth']} | " + " | ".join(cells) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
