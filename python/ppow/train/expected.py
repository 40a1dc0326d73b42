"""PPOW's window objective in expectation (`ppow-train ppow --estimator expected`).

Under greedy verification against the cached trajectory, a window drafted after committed position t
accepts its j-th token only if the drafter drew the target's tokens at window positions 1..j. With
s_i = the drafter's probability of the target's token at window position i, given the target's tokens
before it (one teacher-forced pass), the accepted length a of a k-window sampled from the drafter has

    P(a >= j) = prod_{i<=j} s_i,   P(a = j) = P(a >= j) (1 - s_{j+1})  (j < k),   P(a = k) = P(a >= k).

This is exact, not an approximation: the only drafts whose probability matters are those that agree
with the trajectory up to the first rejection, and there the drafter's inputs ARE the trajectory's
tokens (for a feature drafter: its own unrolled states, as training-time test computes them). So every
reward that depends on the window only through its decisive positions (the accepted prefix and the
first rejection) has a closed-form expectation, and the policy gradient of PPOW's window return with
an infinite group is the gradient of that expectation:

    E[r_speed] = sum_a P(a) (a + 1) T(1) / C(k, a)                          (rewards.py's C per kind)
    E[r_prox]  = sum_a P(a) mean_{j < min(a+1, k)} sum_v min(p_j(v), q_j(v))  (the sampled definition)

Both are computed for every window start of a chunk from ONE teacher-forced pass (a feature drafter's
training-time-test pass unrolled k_max steps, a standalone drafter's causal pass over its chunk), at
about the price of a KD step.

Gradient of the proximity term (`--prox-grad`): "full" differentiates E[r_prox] in both the
probabilities P(a) and the overlaps sum_v min(p, q) (the exact gradient of the expected reward, whose
overlap part is an LK-style 1 - TV gradient on the decisive positions); "score" treats the overlaps as
constants, which is what the sampled estimator's REINFORCE gradient estimates (it never differentiates
the reward itself). The tests check "score" against the sampled estimator's mean gradient and both
values against brute-force enumeration.
"""

import math

import torch

from . import kd
from . import rewards as R
from . import windowing as W
from .common import step_generator

NEG = -1.0e4  # log-probability of a token the drafter cannot draft (exp() is exactly 0)


# --------------------------------------------------------------------------------------- the expectation


def acceptance_distribution(log_s, k):
    """log_s [B,K]: log-probability of drafting the target's token at window position j given the
    target's tokens before it (NEG where the token is outside the draft vocabulary); k [B] window
    lengths (<= K). Returns P_a [B, K+1]: P(a = j) for j = 0..K (0 for j > k)."""
    B, K = log_s.shape
    j = torch.arange(K, device=log_s.device)
    live = j[None, :] < k[:, None]
    ls = torch.where(live, log_s, torch.full_like(log_s, NEG))  # positions past the window never accept
    ge = torch.exp(torch.cumsum(ls, 1))  # P(a >= j+1), j = 0..K-1
    one = torch.ones_like(ge[:, :1])
    ge = torch.cat([one, ge], 1)  # P(a >= j), j = 0..K
    s_next = torch.cat([torch.exp(ls), torch.zeros_like(one)], 1)  # s_{j+1}; 0 past the window
    return ge * (1.0 - s_next)


def speedup_table(cost, K, speedup=True, device="cpu"):
    """[K+1, K+1]: entry [k, a] = the sampled Cost-Aware Speedup reward of a k-window with a accepted
    ((a + 1) with the speedup reward off); 0 where a > k or k = 0."""
    tab = torch.zeros(K + 1, K + 1, dtype=torch.float64)
    for k in range(1, K + 1):
        for a in range(k + 1):
            tab[k, a] = cost.speedup(k, a) if speedup else a + 1.0
    return tab.float().to(device)


def prefix_means(ov, k):
    """ov [B,K] per-position overlaps -> [B, K+1]: entry a = mean of ov over the decisive positions
    j < min(a + 1, k) of a window with a accepted (the sampled proximity reward)."""
    B, K = ov.shape
    csum = torch.cumsum(ov, 1)
    a = torch.arange(K + 1, device=ov.device)
    m = torch.minimum(a[None, :] + 1, k[:, None]).clamp_min(1)  # decisive positions
    return csum.gather(1, m - 1) / m


def expected_window_rewards(log_s, q_at, p, k, cost, speedup=True, proximity=True, speedup_coef=1.0,
                            proximity_coef=0.5, prox_grad="full", table=None):
    """Expected PPOW rewards of k-windows under the drafter's sampling (greedy verification on the
    trajectory). log_s [B,K] (at the sampling temperature), q_at [B,K,topk] = the drafter's probabilities
    (temperature 1) at the target's top-k ids, 0 where p is 0; p [B,K,topk]; k [B].

    Returns (total [B], parts): speed = E[r_speed], prox = E[r_prox], accepted = E[a], P_a [B,K+1].
    Differentiable in log_s and (prox_grad "full") q_at."""
    K = log_s.shape[1]
    P_a = acceptance_distribution(log_s, k)
    tab = table if table is not None else speedup_table(cost, K, speedup, log_s.device)
    r_speed = (P_a * tab[k]).sum(1)
    ov = R.overlap(p, q_at)
    if prox_grad == "score":
        ov = ov.detach()
    elif prox_grad != "full":
        raise ValueError(f"unknown --prox-grad {prox_grad!r}")
    prox_a = prefix_means(ov, k)
    r_prox = (P_a * prox_a).sum(1)
    accepted = (P_a * torch.arange(K + 1, device=P_a.device)).sum(1)
    total = speedup_coef * r_speed + (proximity_coef * r_prox if proximity else 0.0)
    # the window's reward for each accepted length, for its spread under the drafter's sampling
    r_a = speedup_coef * tab[k] + (proximity_coef * prox_a if proximity else 0.0)
    std = (P_a * (r_a - total[:, None]) ** 2).sum(1).clamp_min(0).sqrt()
    return total, dict(speed=r_speed, prox=r_prox, accepted=accepted, P_a=P_a, std=std)


def target_kl(lq_at, p, mask):
    """The target anchor: KL(p' || q) per position, p' = the target's cached top-k restricted to the
    draft vocabulary and renormalised (as kd.kd_loss uses it), lq_at = log q at those ids; mean over
    mask positions whose top-k has mass in the draft vocabulary."""
    mass = p.sum(-1)
    ok = mask & (mass > 0)
    pn = p / mass.clamp_min(1e-12)[..., None]
    kl = (pn * (torch.log(pn.clamp_min(1e-12)) - lq_at)).sum(-1)
    return (kl * ok).sum() / ok.sum().clamp_min(1)


# --------------------------------------------------------------------------------------- one pass, all windows


def valid_starts(cache, K, all_positions=False, feature=False):
    """[N] bool: committed positions t after which a K-token window is exactly verifiable from the
    cache (the sampled estimator's candidates); a feature drafter also needs an entry before t."""
    ok = torch.zeros(len(cache), dtype=torch.bool)
    ok[cache.window_starts(K, continuation_only=not all_positions)] = True
    if feature:
        ok &= torch.arange(len(cache)) > cache.seq_start[cache.seq_of]
    return ok


class _Positions:
    """Per-position quantities of one pass, [S,B,T(,topk)] (feature: step i, column c) or [B,T(,topk)]
    (standalone: window position i of the window at column c is column c + i)."""

    def __init__(self, stepped, **t):
        self.stepped, self.t = stepped, t

    def windows(self, b, c, K):
        """Gather every quantity for windows (b [W], c [W]) -> [W,K(,topk)]."""
        i = torch.arange(K, device=b.device)[None, :]
        out = {}
        for name, x in self.t.items():
            if x is None:
                out[name] = None
            elif self.stepped:
                out[name] = x[i, b[:, None], c[:, None]]
            else:
                out[name] = x[b[:, None], c[:, None] + i]
        return out


def _per_position(lq, labels, p_ids, p, temperature, ref_lq=None):
    """From log q [.., V] (temperature 1): log_s at the sampling temperature, lq at the label, lq at the
    target's top-k ids, and KL(q || ref) when the reference anchor needs it."""
    ok = labels >= 0
    lab = labels.clamp_min(0)[..., None]
    lq_lab = torch.where(ok, lq.gather(-1, lab).squeeze(-1), torch.full_like(lq[..., 0], NEG))
    if temperature == 1.0:
        log_s = lq_lab
    else:
        lt = torch.log_softmax(lq / temperature, -1)  # softmax(logits / T) = softmax(log q / T)
        log_s = torch.where(ok, lt.gather(-1, lab).squeeze(-1), torch.full_like(lq_lab, NEG))
    kl_ref = None if ref_lq is None else (lq.exp() * (lq - ref_lq)).sum(-1)
    return log_s, lq_lab, lq.gather(-1, p_ids), kl_ref


def feature_batch(cache, vocab, valid, K, args, g, device):
    """Chunks (kd.feature_chunks: the whole sequence when it fits --chunk-len) whose columns c have a
    window start t = c + 1, laid out for a training-time-test pass unrolled K steps (kd.ttt_batch):
    column c at step i drafts window position i of the window after t (its own states, the trajectory's
    tokens). Returns a dict of the pass's inputs and the windows b [W], c [W], starts [W]."""
    N = len(cache)
    starts, ends = kd.feature_chunks(cache, n_chunks(args, K, cache, True), args.chunk_len, g, valid)
    every_row = torch.ones(N, dtype=torch.bool)
    feats, key_mask, toks, labels, p_ids, p, _ = kd.ttt_batch(cache, vocab, starts, ends, K, every_row)
    B, T = key_mask.shape
    n = ends - starts
    pos = starts[:, None] + torch.arange(T)[None, :] - (T - n)[:, None]  # cache position of each column
    win = key_mask & valid[(pos + 1).clamp(0, N - 1)]
    b, c = torch.nonzero(win, as_tuple=True)
    return dict(feats=feats.to(device), key_mask=key_mask.to(device), toks=[x.to(device) for x in toks],
                labels=labels.to(device), p_ids=p_ids.to(device), p=p.to(device), b=b.to(device), c=c.to(device),
                starts=pos[b, c] + 1)


def feature_forward(model, ref, batch, steps, args):
    """The training-time-test pass over a feature_batch, unrolled `steps` (<= its K) steps -> _Positions."""
    toks = batch["toks"][:steps]
    logits = model(batch["feats"], toks, batch["key_mask"])
    ref_logits = None
    if ref is not None:
        with torch.no_grad():
            ref_logits = ref(batch["feats"], toks, batch["key_mask"])
    cols = [[] for _ in range(4)]
    for i in range(steps):
        lq = torch.log_softmax(logits[i].float(), -1)
        logits[i] = None  # only the log-softmax is kept for backward
        rl = None if ref_logits is None else torch.log_softmax(ref_logits[i].float(), -1)
        for lst, x in zip(cols, _per_position(lq, batch["labels"][i], batch["p_ids"][i], batch["p"][i],
                                              args.temperature, rl)):
            lst.append(x)
    log_s, lq_lab, lq_at, kl_ref = (None if x[0] is None else torch.stack(x) for x in cols)
    return _Positions(True, log_s=log_s, lq_lab=lq_lab, lq_at=lq_at, p=batch["p"][:steps], kl_ref=kl_ref)


def feature_pass(model, ref, cache, vocab, valid, K, args, g, device):
    """feature_batch + feature_forward over all K steps: (_Positions, b [W], c [W], starts [W])."""
    batch = feature_batch(cache, vocab, valid, K, args, g, device)
    return feature_forward(model, ref, batch, K, args), batch["b"], batch["c"], batch["starts"]


def standalone_chunk_len(args, K):
    """A standalone drafter's chunk: --chunk-len tokens, at most its context + the window (a window at
    column c sees the chunk's columns <= c, so with ctx_len > 0 every window sees at most ctx_len tokens
    of context, as KD's chunks do)."""
    L = args.chunk_len if args.ctx_len <= 0 else min(args.chunk_len, args.ctx_len + K - 1)
    if L < K:
        raise ValueError(f"--chunk-len {args.chunk_len} cannot hold a {K}-token window")
    return L


WINDOWS_PER_STEP = 1024  # --chunks 0: about this many window starts per step


def n_chunks(args, K, cache, feature):
    """--chunks, or (0) enough chunks for about WINDOWS_PER_STEP window starts: a standalone chunk of L
    positions holds L - K + 1 of them; a feature chunk about L (its windows read unrolled steps, not
    later columns; L = the mean sequence length for whole-sequence chunks)."""
    if args.chunks > 0:
        return args.chunks
    if feature:
        per = args.chunk_len if args.chunk_len > 0 else float(cache.seq_len.float().mean())
    else:
        per = standalone_chunk_len(args, K) - K + 1
    return max(1, math.ceil(WINDOWS_PER_STEP / max(1, per)))


def standalone_pass(model, ref, cache, vocab, valid, K, args, g, device):
    """Chunks that begin at a uniformly drawn window start; one causal pass over each: window position
    i of the window at column c is read at column c + i (the trajectory's tokens are its inputs)."""
    cand = torch.nonzero(valid).flatten()
    L = standalone_chunk_len(args, K)
    starts = cand[torch.randint(len(cand), (n_chunks(args, K, cache, False),), generator=g)]
    ends = torch.minimum(starts + L, cache.seq_end[starts])
    x, mask, labels, p_ids, p = kd.kd_batch(cache, vocab, starts, ends)
    B, T = x.shape
    n = ends - starts
    col = torch.arange(T)[None, :]
    pos = starts[:, None] + col - (T - n)[:, None]
    N = len(cache)
    win = mask & (col + K - 1 < T) & valid[pos.clamp(0, N - 1)]
    b, c = torch.nonzero(win, as_tuple=True)
    x, mask, labels, p_ids, p = (t.to(device) for t in (x, mask, labels, p_ids, p))
    logits, _ = model(x, key_mask=mask)
    rl = None
    if ref is not None:
        with torch.no_grad():
            rl = torch.log_softmax(ref(x, key_mask=mask)[0].float(), -1)
    lq = torch.log_softmax(logits.float(), -1)
    del logits
    log_s, lq_lab, lq_at, kl_ref = _per_position(lq, labels, p_ids, p, args.temperature, rl)
    P = _Positions(False, log_s=log_s, lq_lab=lq_lab, lq_at=lq_at, p=p, kl_ref=kl_ref)
    return P, b.to(device), c.to(device), pos[b, c]


# --------------------------------------------------------------------------------------- the training step


def choose(score, s, args, cost, K):
    """Adaptive Divergence-Aware Windowing over all windows of the pass: keep the top --window-keep
    fraction by score, window length from the cost profile (windowing.adaptive_k); without adaptive
    windowing every window, k = --k. Returns (selected indices, k of those)."""
    n = len(score)
    if not args.adaptive_window:
        return torch.arange(n, device=score.device), torch.full((n,), K, dtype=torch.long, device=score.device)
    sel = W.select_windows(score, args.window_keep, n_keep=max(1, int(math.ceil(args.window_keep * n))))
    k = W.adaptive_k(s[sel].cpu(), args.k_min, args.k_max, args.adaptive_k, cost).to(score.device)
    return sel, k


def make_step_fn(model, ref, cache, vocab, args, cost, rank=0):
    """One update per step: every window of --chunks chunks from one teacher-forced pass, loss =
    -(speedup_coef E[r_speed] + proximity_coef E[r_prox]) averaged over the selected windows + the anchor
    (--anchor target: KL to the target's cached top-k on the windows' positions; reference: KL to the
    frozen --init drafter there; --kl-coef) + --kd-coef x CE on the target's tokens there."""
    if getattr(args, "exact_target", False) or getattr(args, "verify", "greedy") != "greedy":
        raise ValueError("--estimator expected verifies greedily on the cached trajectory; --exact-target and "
                         "--verify sampled need --estimator sampled")
    feature = getattr(model, "kind", "standalone") == "feature"
    K = args.k_max if args.adaptive_window else args.k
    valid = valid_starts(cache, K, args.all_positions, feature)
    if not bool(valid.any()):
        raise ValueError(f"the cache has no position with a verifiable {K}-token window")
    if feature and args.chunk_len and args.chunk_len < 2:
        raise ValueError("--chunk-len must hold at least 2 entries")
    if not feature:
        standalone_chunk_len(args, K)  # fail early
    pass_fn = feature_pass if feature else standalone_pass
    anchor = getattr(args, "anchor", "target")
    use_ref = anchor == "reference" and args.kl_coef > 0
    if use_ref and ref is None:
        raise ValueError("--anchor reference needs the reference drafter")
    dev = next(model.parameters()).device
    table = speedup_table(cost, K, args.speedup_reward, dev)

    def windows_and_choice(P, b, c):
        w = P.windows(b, c, K)
        with torch.no_grad():
            q_at = w["lq_at"].exp() * (w["p"] > 0)
            score = W.window_score(w["p"], q_at, args.score_positions)
            sel, k = choose(score, w["lq_lab"].exp(), args, cost, K)
        return w, score, sel, k

    def step_fn(tr, step):
        g = step_generator(args.seed, step, rank)
        r = ref if use_ref else None
        if feature and args.adaptive_window:
            # choose windows and lengths on a pass without gradients, then differentiate only the unrolled
            # steps the chosen windows read (adaptive k is often 1-2 where k_max is 8)
            batch = feature_batch(cache, vocab, valid, K, args, g, tr.device)
            b, c = batch["b"], batch["c"]
            if len(b) == 0:
                raise ValueError("no window fits the sampled chunks (raise --chunk-len)")
            with torch.no_grad():
                _, score, sel, k = windows_and_choice(feature_forward(tr.ddp, None, batch, K, args), b, c)
            Kg = int(k.max())
            w = feature_forward(tr.ddp, r, batch, Kg, args).windows(b[sel], c[sel], Kg)
        else:
            P, b, c, _ = pass_fn(tr.ddp, r, cache, vocab, valid, K, args, g, tr.device)
            if len(b) == 0:
                raise ValueError("no window fits the sampled chunks (raise --chunk-len)")
            w, score, sel, k = windows_and_choice(P, b, c)
            w = {name: None if x is None else x[sel] for name, x in w.items()}
            Kg = K
        p = w["p"]
        q_at = w["lq_at"].exp() * (p > 0)  # out-of-draft-vocab target mass counts as unmatched
        total, parts = expected_window_rewards(
            w["log_s"], q_at, p, k, cost, speedup=args.speedup_reward, proximity=args.proximity,
            speedup_coef=args.speedup_coef, proximity_coef=args.proximity_coef, prox_grad=args.prox_grad,
            table=table[:, :Kg + 1])
        if args.adv_norm == "std":
            # the infinite-group limit of GRPO's normalised advantages: E[(r - mean) / std * grad log pi]
            # = grad E[r] / std, std = the window's reward spread under the drafter's sampling (a constant)
            loss = -(total / (parts["std"].detach() + 1e-6)).mean()
        else:
            loss = -total.mean()
        in_win = torch.arange(Kg, device=k.device)[None, :] < k[:, None]
        metrics = {}
        if args.kl_coef > 0:
            if anchor == "target":
                kl = target_kl(w["lq_at"], p, in_win)
                metrics["kl_target"] = kl.detach()
            else:
                kl = (w["kl_ref"] * in_win).sum() / in_win.sum()
                metrics["kl_ref"] = kl.detach()
            loss = loss + args.kl_coef * kl
        if args.kd_coef > 0:
            lab = w["lq_lab"]
            ok = in_win & (lab > NEG / 2)
            ce = -(lab * ok).sum() / ok.sum().clamp_min(1)
            loss = loss + args.kd_coef * ce
            metrics["kd_ce"] = ce.detach()
        metrics["grad_norm"] = tr.update(loss)
        metrics.update(reward=total.mean().detach(), r_speed=parts["speed"].mean().detach(),
                       r_prox=parts["prox"].mean().detach(), accepted=parts["accepted"].mean().detach(),
                       k_mean=k.float().mean(), window_score=score[sel].mean(), windows=int(len(sel)),
                       windows_scored=int(len(score)), loss=loss.detach())
        return metrics

    return step_fn
