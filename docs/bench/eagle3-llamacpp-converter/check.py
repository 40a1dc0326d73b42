"""Does llama.cpp's convert_hf_to_gguf.py, run on ppow's HF EAGLE-3 export, give a drafter that drafts
what ppow's own GGUF drafts? (docs/eagle3-interop.md has the commands that made the files.)

For each Spec-Bench dev prompt (first turn, the target's template): greedy generation with each
drafter at a fixed window k (outputs against plain decoding and against the first drafter's, tau,
drafts accepted); then, for every prompt, each drafter's greedy window of k after the prompt plus the
first 8 plain tokens (draft tokens; the logits of each window step compared element-wise over the
draft vocabulary with the first drafter's, up to the first step whose drafted tokens differ, since
later steps are fed other tokens; and the first step alone). One thread everywhere.

python check.py --target T.gguf --drafter ppow=A.gguf --drafter llamacpp-q8_0=B.gguf ... \
    --prompts specbench-dev.jsonl --per-category 3 -n 48 --k 4 --template chat -o report.json
"""
import argparse
import json
import platform
import time
from collections import defaultdict

import numpy as np

import ppow
from ppow.templates import apply_template, parse_special


def read_prompts(path, per_category):
    seen, out = defaultdict(int), []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if seen[row["category"]] < per_category:
                seen[row["category"]] += 1
                out.append((row["category"], row["turns"][0]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--drafter", action="append", required=True, metavar="NAME=PATH.gguf",
                    help="the first one is the reference (ppow's own GGUF)")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--per-category", type=int, default=3)
    ap.add_argument("-n", type=int, default=48)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--template", default="chat")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()

    target = ppow.models.resolve_target(args.target) if not args.target.endswith(".gguf") else args.target
    drafters = dict(d.split("=", 1) for d in args.drafter)
    names = list(drafters)
    prompts = read_prompts(args.prompts, args.per_category)
    gens = {"plain": ppow.Generator(target, n_ctx=2048, n_threads=args.threads)}
    gens.update({n: ppow.Generator(target, p, n_ctx=2048, n_threads=args.threads) for n, p in drafters.items()})
    special = parse_special(args.template)
    res = {n: dict(n_steps=0, n_accepted=0, n_drafted=0, same_as_plain=0, same_as_ref=0) for n in names}
    logit_diff = {n: [] for n in names[1:]}  # per prompt: rows up to the first differing draft token
    first_row_diff = {n: [] for n in names[1:]}  # per prompt: window step 0 (prompt and features only)
    logit_scale = []
    window_same = {n: 0 for n in names[1:]}
    t0 = time.time()
    # Generations first, every generator on the same prompts in the same order: a generator reuses the
    # cached prefix of its last prompt, and on a CPU a prefix prefilled in another batch (draft_window
    # re-prefills from scratch) can hold other bits and turn a near-tie, so windows come afterwards.
    plain_out = []
    for cat, q in prompts:
        ids = gens["plain"].tokenize(apply_template(args.template, q, target), parse_special=special)
        plain = gens["plain"].generate(ids, n_predict=args.n, ignore_eos=True).tokens
        plain_out.append((ids, plain))
        ref = None
        for n in names:
            g = gens[n].generate(ids, n_predict=args.n, ignore_eos=True, draft_max=args.k, draft_policy="fixed")
            ref = g.tokens if ref is None else ref
            r = res[n]
            r["n_steps"] += g.stats.n_steps
            r["n_accepted"] += g.stats.n_accepted
            r["n_drafted"] += g.stats.n_drafted
            r["same_as_plain"] += g.tokens == plain
            r["same_as_ref"] += g.tokens == ref
            r["exact"] = r.get("exact", 0) + bool(g.stats.exact)
    for ids, plain in plain_out:
        windows = {n: gens[n].draft_window(ids + plain[:8], args.k) for n in names}
        ref_tok, ref_logits = windows[names[0]]
        logit_scale.append(float(np.abs(ref_logits).max()))
        for n in names[1:]:
            tok, logits = windows[n]
            window_same[n] += tok == ref_tok
            # step j is fed the tokens drafted before it: past a differing token the rows answer other inputs
            rows = next((j for j, (a, b) in enumerate(zip(tok, ref_tok)) if a != b), len(tok) - 1) + 1
            logit_diff[n].append(float(np.abs(logits[:rows] - ref_logits[:rows]).max()))
            first_row_diff[n].append(float(np.abs(logits[0] - ref_logits[0]).max()))
    report = dict(target=target, drafters=drafters, prompts=len(prompts), per_category=args.per_category,
                  n_predict=args.n, k=args.k, template=args.template, threads=args.threads,
                  machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
                  seconds=round(time.time() - t0, 1), ref_draft_logits_max_abs=max(logit_scale), systems={})
    for n in names:
        r = res[n]
        r["tau"] = round((r["n_accepted"] + r["n_steps"]) / r["n_steps"], 4)
        if n != names[0]:
            r["draft_windows_same_tokens"] = window_same[n]
            r["draft_logits_max_abs_diff"] = max(logit_diff[n])
            r["draft_logits_median_of_per_prompt_max"] = float(np.median(logit_diff[n]))
            r["first_step_logits_max_abs_diff"] = max(first_row_diff[n])
            r["first_step_logits_median_of_per_prompt_max"] = float(np.median(first_row_diff[n]))
        report["systems"][n] = r
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
