#!/usr/bin/env python3
"""Prompt lookup under `auto`, simulated on greedy trajectories: which window rule pays on which costs.

Under greedy verification a lookup window's fate is fixed by the target's own greedy continuation: it
accepts its drafts while they equal the next greedy tokens. So a data-engine cache of greedy answers
(`ppow-train data --prompt-tail 0`, e.g. the dev caches) plus a verify cost profile T(n) is enough to
replay the engine's lookup rule (cpp/engine.cpp lookup_window, cpp/cost_model.cpp best_lookup_window,
cpp/lookup.cpp) step by step, for every prompt, with no timing noise: simulated time is the sum of
T(rows) over the steps. This is a model of the engine's rule, kept small on purpose; the engine is
what ships, and ppow-bench is what measures it.

    python tools/lookup-sim.py --cache DEV_CACHE [--cache ...] --profile '{"1": 13.3, "2": 24.5, "3": 29.0}' [-n 64]

Rules compared (`--rules`): optimistic (until 2026-12-05: prior 2 acceptances in 2, no evidence
from declined drafts, one table per n-gram length, half the evidence kept per generation); ngram (a
neutral prior, 1 in 2, and declined drafts judged against the committed tokens); engine (the rule that
ships: as ngram, with the occurrence that agrees furthest back, tables per agreement length
(lookup_key), 0.8 of the evidence kept); oracle (a window only where it is accepted whole and pays:
the ceiling).
"""
import argparse
import json
import math
import os
import statistics
import sys

import numpy as np
from safetensors import safe_open

from ppow.train.cache_files import finished_shards

MAX_NGRAM = 2          # lookup.h kLookupMaxNgram
MATCH_MAX = 16         # how far back a match's agreement is measured
N_KEYS = 5
VERIFY_CHUNK = 7       # engine.h kCpuInvariantRows: longer windows are verified in chunks


def read_trajectories(cache_dir):
    """[(prompt ids, greedy continuation ids)] of every finished shard's sequences, in cache order (only
    the token tensors are read, not the hidden states ppow.train.cache.Cache loads)."""
    out = []
    for num, side in sorted(finished_shards(cache_dir), key=lambda x: x[0]):
        with safe_open(os.path.join(cache_dir, side["summary"]["file"]), "pt") as f:
            tokens, lens, plens = (f.get_tensor(k).tolist() for k in ("tokens", "seq_len", "prompt_len"))
        at = 0
        for n, p in zip(lens, plens):
            out.append((tokens[at:at + p], tokens[at + p:at + n]))
            at += n
    return out


def lookup_draft(hist, n_max, longest=False):
    """The engine's lookup (lookup.cpp): the tokens after the latest earlier occurrence of the history's
    last MAX_NGRAM (else fewer) tokens, and that n-gram's length. Also `match`: how far back that
    occurrence agrees with the history's tail (up to MATCH_MAX). longest=True: among the occurrences of
    the n-gram, the one that agrees furthest back (the latest of those)."""
    n = len(hist)
    for g in range(min(MAX_NGRAM, n - 1), 0, -1):
        tail = hist[n - g:]
        best = None
        for s in range(n - g - 1, -1, -1):
            if hist[s:s + g] != tail:
                continue
            m = g
            while m < MATCH_MAX and s - (m - g) - 1 >= 0 and hist[s - (m - g) - 1] == hist[n - m - 1]:
                m += 1
            if best is None or m > best[1]:
                best = (s, m)
            if not longest or m >= MATCH_MAX:
                break
        if best is not None:
            frm = best[0] + g
            return hist[frm:frm + min(n_max, n - frm)], g, best[1]
    return [], 0, 0


def match_key(g, match, keyed):
    """The evidence table a match belongs to: its n-gram length (the engine), or its match length bucket."""
    if not keyed:
        return g
    return 1 if match <= 1 else 2 if match <= 2 else 3 if match <= 4 else 4 if match <= 8 else 5


class Rule:
    def __init__(self, name, costs, prior_acc, prior_n, empty_rate, shadow, decay=0.5, oracle=False,
                 keyed=False, longest=False):
        self.name, self.costs, self.shadow, self.decay, self.oracle = name, costs, shadow, decay, oracle
        self.keyed, self.longest = keyed, longest
        self.prior_acc, self.prior_n, self.empty_rate = prior_acc, prior_n, empty_rate
        self.acc = {g: [] for g in range(1, N_KEYS + 1)}
        self.n = {g: [] for g in range(1, N_KEYS + 1)}

    def verify(self, rows):
        t, full = 0.0, rows
        while full > VERIFY_CHUNK:
            t += self.costs[VERIFY_CHUNK]
            full -= VERIFY_CHUNK
        return t + self.costs[full]

    def observe(self, g, pos, ok):
        n, acc = self.n[g], self.acc[g]
        while len(n) <= pos:
            n.append(0.0)
            acc.append(0.0)
        n[pos] += 1
        acc[pos] += ok

    def begin(self):
        for g in self.n:
            self.n[g] = [x * self.decay for x in self.n[g]]
            self.acc[g] = [x * self.decay for x in self.acc[g]]

    def best_window(self, g, n_avail):
        n, acc = self.n[g], self.acc[g]

        def rate(pos):
            if not n:
                return self.empty_rate
            p = min(pos, len(n) - 1)
            return (acc[p] + self.prior_acc) / (n[p] + self.prior_n)

        plain = 1.0 / self.costs[1]
        best, best_k, expected, p_all = plain, 0, 0.0, 1.0
        for k in range(1, n_avail + 1):
            p_all *= rate(k - 1)
            expected += p_all
            r = (1.0 + expected) / self.verify(k + 1)
            if r > best:
                best, best_k = r, k
        return best_k


RULES = ("optimistic", "ngram", "engine", "oracle")


def make_rule(name, costs, decay=None):
    """One of RULES (the engine's rules over time, and the ceiling); decay None: the rule's own."""
    if name == "optimistic":
        return Rule(name, costs, 2.0, 2.0, 1.0, shadow=False, decay=decay or 0.5)
    if name == "ngram":
        return Rule(name, costs, 1.0, 2.0, 0.5, shadow=True, decay=decay or 0.5)
    if name == "engine":
        return Rule(name, costs, 1.0, 2.0, 0.5, shadow=True, decay=decay or 0.8, keyed=True, longest=True)
    if name == "oracle":
        return Rule(name, costs, 0, 1, 1.0, shadow=False, oracle=True)
    raise ValueError(f"unknown rule {name!r} (known: {', '.join(RULES)})")


def generate(rule, prompt, traj, n_predict, draft_max=8):
    """Simulated ms and steps for one generation of len(traj) (<= n_predict) tokens."""
    rule.begin()
    hist, done, ms, steps, shadow = list(prompt), 0, 0.0, 0, None
    n_out = min(n_predict, len(traj))
    while done < n_out:
        k_cap = min(draft_max, n_out - done - 1)
        if shadow is not None:  # judge the declined draft against what was committed since
            toks, g, at, judged = shadow
            while judged < len(toks) and at + judged < len(hist):
                ok = hist[at + judged] == toks[judged]
                rule.observe(g, judged, ok)
                judged += 1
                if not ok:
                    judged = len(toks)
            shadow = None if judged >= len(toks) else (toks, g, at, judged)
        cand, g, match = lookup_draft(hist, k_cap, rule.longest) if k_cap > 0 else ([], 0, 0)
        g = match_key(g, match, rule.keyed)
        k = 0
        if cand:
            if rule.oracle:
                a = 0
                while a < len(cand) and cand[a] == traj[done + a]:
                    a += 1
                k = a if a > 0 and (1 + a) / rule.verify(a + 1) > 1 / rule.costs[1] else 0
            else:
                k = rule.best_window(g, len(cand))
            if k == 0 and rule.shadow and shadow is None:
                shadow = (cand, g, len(hist), 0)
        if k > 0:
            a = 0
            while a < k and cand[a] == traj[done + a]:
                a += 1
            for i in range(min(a + 1, k)):
                rule.observe(g, i, i < a)
            ms += rule.verify(k + 1)
            commit = min(a + 1, n_out - done)
        else:
            ms += rule.costs[1]
            commit = 1
        hist += traj[done:done + commit]
        done += commit
        steps += 1
    return ms, steps, n_out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, action="append",
                    help="a data-engine cache of greedy answers (prompt-tail 0); repeat to pool caches")
    ap.add_argument("--profile", required=True, help="verify costs T(n) in ms as JSON {n: ms} or a file "
                    "(Generator.cost_profile()['target_ms']); missing sizes are interpolated linearly")
    ap.add_argument("-n", type=int, default=64, help="tokens per prompt (at most the cache's)")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--decay", type=float, default=None, help="evidence kept at each generation's start "
                    "(default: each rule's own, 0.5 or the engine's 0.8)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    prof = json.load(open(args.profile)) if os.path.exists(args.profile) else json.loads(args.profile)
    prof = prof.get("target_ms", prof)
    known = sorted((int(k), float(v)) for k, v in prof.items())
    xs, ys = [k for k, _ in known], [v for _, v in known]
    costs = {n: float(np.interp(n, xs, ys)) for n in range(1, VERIFY_CHUNK + 1)}
    if len(xs) > 1:  # beyond the largest measured size: the last two sizes' slope
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        for n in range(xs[-1] + 1, VERIFY_CHUNK + 1):
            costs[n] = ys[-1] + slope * (n - xs[-1])
    seqs = [t for c in args.cache for t in read_trajectories(c)]

    report = {"cache": args.cache, "costs_ms": costs, "n": args.n, "prompts": len(seqs), "rules": {}}
    print(f"{len(seqs)} prompts, {args.n} tokens, T(n)/T(1): "
          + " ".join(f"{n}:{costs[n] / costs[1]:.2f}" for n in sorted(costs)))
    print(f"{'rule':<12} {'median':>7} {'geomean':>8} {'total':>7} {'<0.95':>6} {'tau':>6}")
    for name in args.rules.split(","):
        rule = make_rule(name, costs, args.decay)
        speedups, t_all, plain_all, steps_all, toks_all = [], 0.0, 0.0, 0, 0
        for prompt, traj in seqs:
            ms, steps, n_out = generate(rule, prompt, traj, args.n)
            if n_out == 0:
                continue
            plain = n_out * costs[1]
            speedups.append(plain / ms)
            t_all, plain_all, steps_all, toks_all = t_all + ms, plain_all + plain, steps_all + steps, toks_all + n_out
        row = {"median": statistics.median(speedups),
               "geomean": math.exp(sum(map(math.log, speedups)) / len(speedups)),
               "total": plain_all / t_all, "below_0.95": sum(s < 0.95 for s in speedups),
               "tau": toks_all / steps_all, "n": len(speedups)}
        report["rules"][name] = row
        print(f"{name:<12} {row['median']:>7.3f} {row['geomean']:>8.3f} {row['total']:>7.3f} "
              f"{row['below_0.95']:>6d} {row['tau']:>6.3f}")
    if args.json:
        json.dump(report, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
