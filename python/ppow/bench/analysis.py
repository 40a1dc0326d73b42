"""From raw runs to numbers: token-for-token checks against the plain baseline, per-prompt
speedups, and summaries (median and spread) per system and per category."""
from __future__ import annotations

import statistics


def first_mismatch(expected, got) -> int | None:
    """Index of the first differing token, or None when the lists are equal. A list that stops
    early (e.g. at EOS) differs at the position where the other goes on."""
    for i, (a, b) in enumerate(zip(expected, got)):
        if a != b:
            return i
    return None if len(expected) == len(got) else min(len(expected), len(got))


def _baseline_index(runs):
    return {(r["system"], r["qid"], r["repeat"]): r for r in runs}


def check_outputs(runs, systems) -> list:
    """Compare every speculative run with its own plain baseline (same prompt, same repeat)."""
    base = _baseline_index(runs)
    by_name = {s["name"]: s for s in systems}
    out = []
    for r in runs:
        b_name = by_name[r["system"]]["baseline"]
        if b_name is None:
            continue
        b = base.get((b_name, r["qid"], r["repeat"]))
        if b is None:
            continue
        expected, got = b["tokens"], r["tokens"]
        if by_name[r["system"]].get("compare_prefix"):
            # over the common length, less its last token (a cut text may re-tokenize differently there)
            n = max(0, min(len(expected), len(got)) - 1)
            expected, got = expected[:n], got[:n]
        pos = first_mismatch(expected, got)
        if pos is not None:
            out.append({"system": r["system"], "baseline": b_name, "qid": r["qid"], "category": r["category"],
                        "repeat": r["repeat"], "position": pos,
                        "expected": b["tokens"][pos:pos + 4], "got": r["tokens"][pos:pos + 4],
                        "n_expected": len(b["tokens"]), "n_got": len(r["tokens"])})
    return out


def add_speedups(runs, systems) -> None:
    """speedup = tokens/s of the run / tokens/s of its baseline on the same prompt and repeat
    (for greedy runs with identical outputs this is baseline time / run time)."""
    base = _baseline_index(runs)
    by_name = {s["name"]: s for s in systems}
    for r in runs:
        b_name = by_name[r["system"]]["baseline"]
        if b_name is None:
            r["speedup"] = 1.0 if r["tokens_per_second"] else None
            continue
        b = base.get((b_name, r["qid"], r["repeat"]))
        ok = b is not None and b["tokens_per_second"] and r["tokens_per_second"]
        r["speedup"] = r["tokens_per_second"] / b["tokens_per_second"] if ok else None


def spread(values) -> dict | None:
    """Median, quartiles, min and max of the values that are not None."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    if len(v) == 1:
        q1 = q3 = v[0]
    else:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    return {"median": statistics.median(v), "q1": q1, "q3": q3, "min": v[0], "max": v[-1], "n": len(v)}


def pooled_acceptance(runs) -> dict:
    """Acceptance by draft position over all windows of these runs: accepted / drafted."""
    drafted, accepted = [], []
    for r in runs:
        for i, (d, a) in enumerate(zip(r.get("drafted_at") or [], r.get("accepted_at") or [])):
            if i >= len(drafted):
                drafted.append(0)
                accepted.append(0)
            drafted[i] += d
            accepted[i] += a
    return {"drafted": drafted, "accepted": accepted,
            "rate": [a / d if d else None for a, d in zip(accepted, drafted)]}


def summarize(runs) -> dict:
    steps = sum(r["n_steps"] or 0 for r in runs)
    n_acc = [r["n_accepted"] for r in runs]
    if steps and all(a is not None for a in n_acc):
        tau_pooled = (sum(n_acc) + steps) / steps
    elif steps:
        tau_pooled = sum(r["n_generated"] for r in runs) / steps
    else:
        tau_pooled = None
    return {
        "n_runs": len(runs),
        "n_generated": sum(r["n_generated"] for r in runs),
        "speedup": spread(r["speedup"] for r in runs),
        "tokens_per_second": spread(r["tokens_per_second"] for r in runs),
        "tau": spread(r["tau"] for r in runs),
        "tau_pooled": tau_pooled,
        "acceptance_by_position": pooled_acceptance(runs),
    }


def summarize_all(runs, systems) -> dict:
    """{system: {"overall": summary, "by_category": {category: summary}}}"""
    out = {}
    for s in systems:
        mine = [r for r in runs if r["system"] == s["name"]]
        cats = sorted({r["category"] for r in mine})
        out[s["name"]] = {"overall": summarize(mine),
                          "by_category": {c: summarize([r for r in mine if r["category"] == c]) for c in cats}}
    return out


def head_to_head(runs, systems, peer_family="llama.cpp") -> list:
    """ppow against a peer engine running the same drafter at the same fixed k: per prompt and repeat,
    ppow's tokens/s over the peer's, summarised over prompts."""
    rate = {(r["system"], r["qid"], r["repeat"]): r["tokens_per_second"] for r in runs}
    keys = {(r["qid"], r["repeat"]) for r in runs}
    out = []
    for peer in systems:
        if peer["family"] != peer_family or peer["policy"] != "fixed":
            continue
        mine = next((s for s in systems if s["family"] == "ppow" and s["policy"] == "fixed"
                     and s["drafter"] == peer["drafter"] and s["k"] == peer["k"]), None)
        if mine is None:
            continue
        ratios = [rate[(mine["name"], *q)] / rate[(peer["name"], *q)] for q in sorted(keys)
                  if rate.get((mine["name"], *q)) and rate.get((peer["name"], *q))]
        out.append({"ppow": mine["name"], "peer": peer["name"], "drafter": peer["drafter"], "k": peer["k"],
                    "ratio": spread(ratios)})
    return out
