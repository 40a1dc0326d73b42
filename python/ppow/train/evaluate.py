"""Simulated greedy speculative decoding with the target in the loop.

Protocol (meant to match the runtime's greedy loop): the target's prefill yields the first new token
y0; from then on, each verify step the drafter greedily drafts k tokens from the current text (its last
ctx_len tokens; 0 = all; a feature drafter: its entries before the window on the target's features,
then its own states, see drafters.py), the target verifies them, a tokens are accepted and the target adds its own
token (the bonus), so the step yields a + 1 tokens. Under greedy verification the target's tokens after
an accepted prefix are its greedy continuation, which the cache holds: replaying the cached trajectory is
exactly running the target in the loop. Generation stops after the cached continuation (max_new
tokens); the last step drafts only the tokens still needed (k_eff = min(k, remaining)).

τ = mean over verify steps of (a + 1). Also: τ per category, acceptance by draft position (conditional
on the position being reached), and the speedup a cost profile predicts: τ · T_t(1)/(T_t(k+1) + k·T_d(1)).
"""

from collections import defaultdict

import torch

from . import drafters, kd


@torch.no_grad()
def feature_matches(model, vocab, cache, seq, k):
    """match [k, n] (bool) for a feature drafter over sequence `seq` (n positions) in one unrolled pass:
    match[j, c] says whether the j-th token of the greedy window drafted after committed position c + 1
    of the sequence equals the target's.

    Why one pass is exact: the window's token j is only read when tokens 0..j-1 were accepted, i.e.
    equalled the target's, so feeding the trajectory's tokens at every unrolled step (what training-time
    test does, column c at step j: the entry at position c + j) drafts what the chained drafter drafts
    wherever it counts. The context is the whole sequence so far (ctx_len 0; the runtime takes in at most
    a prompt's last 64 positions, which measured the same τ)."""
    s = int(cache.seq_start[seq])
    e = s + int(cache.seq_len[seq])
    every_row = torch.ones(len(cache), dtype=torch.bool)
    feats, key_mask, toks, labels, *_ = kd.ttt_batch(cache, vocab, torch.tensor([s]), torch.tensor([e]), k, every_row)
    dev = model.fc.weight.device
    logits = model(feats.to(dev), [t.to(dev) for t in toks], key_mask.to(dev))
    pred = torch.stack([lg[0].argmax(-1).cpu() for lg in logits])  # [k, n]
    return pred == labels[:, 0]  # labels are -100 where the target's token is outside the draft vocabulary


def _simulate_feature(model, vocab, cache, k, seqs):
    steps = []
    for s in seqs:
        start, end = int(cache.seq_start[s]), int(cache.seq_start[s] + cache.seq_len[s])
        t = start + int(cache.prompt_len[s])  # position of y0
        if t >= end - 1:
            continue
        match = feature_matches(model, vocab, cache, s, k)
        while t < end - 1:
            k_eff = min(k, end - 1 - t)
            col = match[:k_eff, t - 1 - start]
            a = k_eff if bool(col.all()) else int((~col).nonzero()[0])
            steps.append((s, a, k_eff))
            t += a + 1
    return steps


@torch.no_grad()
def simulate(model, vocab, cache, k, ctx_len=0, batch_size=64, seqs=None, fast=True):
    """Run the protocol for one window length k. Returns per-step records (seq, a, k_eff).

    A feature drafter with its whole context (ctx_len 0, as at runtime) is simulated in one unrolled
    pass per sequence (feature_matches); fast=False drafts window by window (the reference)."""
    model.eval()
    kind = drafters.of(model)
    seqs = list(range(len(cache.seq_len))) if seqs is None else seqs
    if fast and kind.name == "feature" and ctx_len <= 0:
        return _simulate_feature(model, vocab, cache, k, seqs)
    # state per sequence: current position t (its last token is the newest accepted one) and end
    state = []
    for s in seqs:
        start = int(cache.seq_start[s])
        t = start + int(cache.prompt_len[s])  # position of y0
        end = start + int(cache.seq_len[s])   # exclusive
        if t < end:
            state.append([s, t, end])
    steps = []
    active = [st for st in state if st[1] < st[2] - 1]
    while active:
        for b in range(0, len(active), batch_size):
            chunk = active[b:b + batch_size]
            contexts = kind.contexts(cache, vocab, [t for _, t, _ in chunk], ctx_len)
            kk = max(min(k, end - 1 - t) for _, t, end in chunk)
            toks, _ = kind.draft(model, contexts, kk, greedy=True)
            for row, st in enumerate(chunk):
                s, t, end = st
                k_eff = min(k, end - 1 - t)
                tgt = vocab.to_draft_label(cache.greedy[t:t + k_eff], ignore_index=-1)
                a = 0
                while a < k_eff and int(toks[row, a]) == int(tgt[a]):
                    a += 1
                steps.append((s, a, k_eff))
                st[1] = t + a + 1
        active = [st for st in active if st[1] < st[2] - 1]
    return steps


def summarize(steps, cache, k, cost=None):
    n = len(steps)
    tau = sum(a + 1 for _, a, _ in steps) / max(1, n)
    by_cat = defaultdict(list)
    for s, a, _ in steps:
        by_cat[cache.categories[s]].append(a + 1)
    reached, accepted = [0] * k, [0] * k
    for _, a, ke in steps:
        for j in range(ke):
            if a >= j:
                reached[j] += 1
                if a > j:
                    accepted[j] += 1
    out = {
        "tau": tau,
        "verify_steps": n,
        "generated_tokens": sum(a + 1 for _, a, _ in steps),
        "mean_accepted": sum(a for _, a, _ in steps) / max(1, n),
        "tau_by_category": {c: sum(v) / len(v) for c, v in sorted(by_cat.items())},
        "steps_by_category": {c: len(v) for c, v in sorted(by_cat.items())},
        "accept_rate_by_position": [accepted[j] / reached[j] if reached[j] else None for j in range(k)],
        "reached_by_position": reached,
    }
    if cost is not None:
        out["predicted_speedup"] = cost.speedup(k, tau - 1.0)
    return out


def evaluate(model, vocab, cache, ks, ctx_len=0, cost=None, batch_size=64):
    res = {}
    for k in ks:
        res[str(k)] = summarize(simulate(model, vocab, cache, k, ctx_len, batch_size), cache, k, cost)
    return res


def tau(model, vocab, cache, k, ctx_len=0):
    """Mean accepted length per verify step (with the bonus token) at window length k."""
    return summarize(simulate(model, vocab, cache, k, ctx_len), cache, k)["tau"]
