"""Head to head with llama.cpp's own EAGLE-3 runtime: the same eagle3 drafter GGUF, target, prompts and k.

    python -m ppow.bench.h2h --target smollm2-135m --drafter drafter.gguf --prompts specbench-dev.jsonl \
        --per-category 4 --k 2 --bin /path/to/llama.cpp/build/bin -o report/h2h.json

For each prompt (framed by the target's own chat template, tokenized with its special tokens as
llama.cpp does) and each k: ppow's Generator (greedy, fixed window k) and llama.cpp's
`llama-speculative-simple --spec-type draft-eagle3 --spec-draft-n-max k --spec-draft-n-min 0
--spec-draft-p-min 0`, both with the same thread count and no weight repacking (`--no-repack`: the
layout ppow loads; llama.cpp 0.3.36's AMX buffer type crashed at depth on a Sapphire Rapids Xeon).
Tokens/s are each engine's own decode-loop figure (prompt excluded: llama.cpp's "decoded N tokens
in T seconds"). Exactness: ppow's output against its own plain greedy output (token ids), llama.cpp's
against llama.cpp's plain greedy output, compared as text (the binary prints text only). That plain
output is ppow's with batch_invariant=False, which runs llama.cpp's own one-token path with the
same kernels (llama-speculative-simple cannot run without drafting: --spec-type none and
--spec-draft-n-max 0 both stop it, and llama-simple loads with repacking and its own threads).
llama.cpp aborts on gemma3 targets (its eagle3 path cannot extract their features); use a llama-
architecture target. How to build the binaries: see ppow/bench/depth.py (its target list
has llama-speculative-simple).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile


def run_llama_cpp(binary, args, prompt_text):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(prompt_text)
        path = f.name
    try:
        res = subprocess.run([binary, *args, "-f", path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    if res.returncode != 0:
        raise SystemExit(f"{os.path.basename(binary)} failed (code {res.returncode}):\n{res.stderr[-2000:]}")
    return res


def llama_cpp_spec(bin_dir, target, drafter, prompt_text, n, k, threads, n_ctx):
    res = run_llama_cpp(os.path.join(bin_dir, "llama-speculative-simple"),
                        ["-m", target, "-md", drafter, "--spec-type", "draft-eagle3", "--spec-draft-n-max", str(k),
                         "--spec-draft-n-min", "0", "--spec-draft-p-min", "0", "-n", str(n), "-t", str(threads),
                         "-td", str(threads), "--no-repack", "--temp", "0", "-c", str(n_ctx)], prompt_text)
    m = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds", res.stderr)
    drafted = int(re.search(r"n_drafted = (\d+)", res.stderr).group(1))
    accepted = int(re.search(r"n_accept  = (\d+)", res.stderr).group(1))
    n_dec, secs = int(m.group(1)), float(m.group(2))
    # the binary echoes the prompt, then the generated text
    text = res.stdout.split(prompt_text, 1)[-1].strip()
    return {"tokens_per_second": n_dec / secs, "n_generated": n_dec, "n_drafted": drafted, "n_accepted": accepted,
            "tau": n_dec / max(1, n_dec - accepted), "text": text}


def main(argv=None):
    import ppow
    from ppow.bench.cli import int_list
    from ppow.bench.prompts import load_prompts
    from ppow.models import resolve_target

    ap = argparse.ArgumentParser(prog="python -m ppow.bench.h2h", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--drafter", required=True, help="eagle3 drafter GGUF")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--per-category", type=int, default=4)
    ap.add_argument("--k", type=int_list, default=[2], metavar="K[,K...]")
    ap.add_argument("-n", "--n-predict", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", required=True, help="directory with llama.cpp's llama-speculative-simple")
    ap.add_argument("-o", "--out", default=None)
    args = ap.parse_args(argv)
    target = resolve_target(args.target)
    ks = args.k

    prompts = load_prompts(args.prompts, "chat", per_category=args.per_category, target=target)
    n_ctx = 2048
    lc_plain_of = {}
    with ppow.Generator(target, n_ctx=n_ctx, n_threads=args.threads, batch_invariant=False) as g:
        for i, p in enumerate(prompts):
            ids = g.tokenize(p.text, parse_special=True)
            lc_plain_of[i] = g.generate(ids, n_predict=args.n_predict).text
    rows = []
    with ppow.Generator(target, args.drafter, n_ctx=n_ctx, n_threads=args.threads) as g:
        for i, p in enumerate(prompts):
            ids = g.tokenize(p.text, parse_special=True)
            plain = g.generate(ids, n_predict=args.n_predict, use_drafter=False)
            lc_plain = lc_plain_of[i].strip()
            for k in ks:
                out = g.generate(ids, n_predict=args.n_predict, draft_max=k)
                lc = llama_cpp_spec(args.bin, target, args.drafter, p.text, args.n_predict, k, args.threads, n_ctx)
                s = out.stats
                row = {"prompt": i, "category": p.category, "k": k,
                       "ppow_tokens_per_second": s.tokens_per_second, "ppow_tau": s.tau,
                       "ppow_acceptance": s.acceptance_rate, "ppow_exact": out.tokens == plain.tokens,
                       "llama_cpp_tokens_per_second": lc["tokens_per_second"], "llama_cpp_tau": lc["tau"],
                       "llama_cpp_acceptance": lc["n_accepted"] / max(1, lc["n_drafted"]),
                       # compare the common prefix: llama-speculative-simple may run past n
                       "llama_cpp_exact": lc["text"][:len(lc_plain)] == lc_plain[:len(lc["text"])]}
                if not row["llama_cpp_exact"]:  # where the texts part, for reading
                    at = next(j for j, (a, b) in enumerate(zip(lc["text"], lc_plain)) if a != b)
                    row["llama_cpp_differs"] = {"at_char": at, "spec": lc["text"][max(0, at - 40):at + 40],
                                                "plain": lc_plain[max(0, at - 40):at + 40]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for k in ks:
        r = [x for x in rows if x["k"] == k]
        ratio = [x["ppow_tokens_per_second"] / x["llama_cpp_tokens_per_second"] for x in r]
        summary[k] = {"prompts": len(r),
                      "ppow_tokens_per_second": statistics.median(x["ppow_tokens_per_second"] for x in r),
                      "llama_cpp_tokens_per_second": statistics.median(x["llama_cpp_tokens_per_second"] for x in r),
                      "median_ratio": statistics.median(ratio),
                      "ppow_tau": statistics.mean(x["ppow_tau"] for x in r),
                      "llama_cpp_tau": statistics.mean(x["llama_cpp_tau"] for x in r),
                      "ppow_acceptance": statistics.mean(x["ppow_acceptance"] for x in r),
                      "llama_cpp_acceptance": statistics.mean(x["llama_cpp_acceptance"] for x in r),
                      "ppow_mismatches": sum(not x["ppow_exact"] for x in r),
                      "llama_cpp_mismatches": sum(not x["llama_cpp_exact"] for x in r)}
        print(json.dumps({"k": k, **summary[k]}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"target": target, "drafter": args.drafter, "threads": args.threads, "n_predict": args.n_predict,
                       "summary": summary, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
