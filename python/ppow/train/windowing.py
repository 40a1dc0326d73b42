"""Adaptive Divergence-Aware Windowing.

Score of a candidate window starting at cache position t (drafter teacher-forced on the target's own
trajectory, so p and q are known at each of the window's positions):
    score = mean over the first m positions j of  max_v p_j(v) * D(p_j, q_j)
    D(p, q) = 1 - sum_{v in top-k(p)} min(p(v), q(v))
D is the total-variation distance when p's mass lies in its cached top-k (otherwise an upper bound).
Confident target (high max p) AND a drafter that disagrees = an informative window: the drafter loses
acceptance there that it could win (where the target itself is unsure, nobody can draft well).
The top `keep` fraction of candidates by score is used for the update.

Adaptive window length (documented choice; the paper does not pin it down). From the drafter's
probability s_j = q_j(target token j) of drafting the target's token at window position j, the expected
accepted length of a k-window under sampling is E[a_k] = sum_{j<=k} prod_{i<=j} s_i. Mode "speedup"
picks k in [k_min, k_max] maximising the expected Cost-Aware Speedup (E[a_k] + 1) * T_t(1) /
C(k, E[a_k]) (rewards.py), i.e. the window the runtime should draft here given the cost profile; mode
"expected" uses k = clip(ceil(E[a_kmax]) + 1, k_min, k_max) (just past where the drafter is expected to
fail, so the decisive position falls inside the window); "off" keeps a fixed k.
"""

import math

import torch


def divergence(p_topk, q_at_topk):
    """1 - sum_{top-k} min(p, q)  ([..., K] -> [...])."""
    return 1.0 - torch.minimum(p_topk, q_at_topk).sum(-1)


def window_score(p_topk, q_at_topk, m=2):
    """p_topk, q_at_topk [B, L, K] (window positions x top-k) -> score [B] over the first m positions.

    p_topk is sorted descending (cache order), so p_topk[..., 0] is the target's max probability.
    """
    m = min(m, p_topk.shape[1])
    pmax = p_topk[:, :m, 0]
    return (pmax * divergence(p_topk[:, :m], q_at_topk[:, :m])).mean(1)


def expected_accepted(s):
    """s [B, L] per-position probabilities of drafting the target token -> E[a_k] for k=1..L, [B, L]."""
    return torch.cumsum(torch.cumprod(s, dim=1), dim=1)


def adaptive_k(s, k_min, k_max, mode="speedup", cost=None):
    """Window length per candidate [B] (long). s [B, >=k_max]."""
    B = s.shape[0]
    if mode == "off":
        return torch.full((B,), k_max, dtype=torch.long)
    ea = expected_accepted(s[:, :k_max])  # [B, k_max]
    if mode == "expected":
        k = torch.ceil(ea[:, -1] - 1e-6).long() + 1
        return k.clamp(k_min, k_max)
    if mode == "speedup":
        if cost is None:
            raise ValueError("adaptive k mode 'speedup' needs a cost model")
        ks = torch.arange(k_min, k_max + 1)
        # one column per k, the same double-precision arithmetic as cost.speedup on Python floats
        exp_speed = torch.stack([cost.speedup(int(k), ea[:, int(k) - 1].double()) for k in ks], 1)
        return ks[exp_speed.argmax(1)]
    raise ValueError(f"unknown adaptive k mode {mode!r}")


def select_windows(score, keep_frac, n_keep=None):
    """Indices of the highest-scoring candidates (ties: lower index first)."""
    n = len(score)
    n_keep = n_keep if n_keep is not None else max(1, int(math.ceil(keep_frac * n)))
    order = torch.argsort(-score, stable=True)
    return order[:n_keep]
