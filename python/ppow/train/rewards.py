"""PPOW window rewards.

Cost-Aware Speedup Reward (per window):
    r_speed = (a + 1) * T_t(1) / C(k, a)
    C(k, a) = T_t(k + 1) + k * T_d(1)                         (standalone drafter)
            = T_t(k + 1) + (k - 1) * T_d(1) + (a + 1) * T_c   (feature drafter, as the engine counts it)
the realised speedup of one verify step over plain decoding: a accepted drafted tokens plus the target's
bonus token, at the price of one target pass over k+1 tokens and the drafter's passes. A feature drafter
takes every committed position in (its catch-up batch, T_c per position, whose last row is also its first
draft step), so its window cost grows with what the window commits.

Distribution-Based Proximity Reward (per window):
    r_prox = mean over decisive positions j of  sum_v min(p_j(v), q_j(v))
p = target (cached top-k, the rest of its mass unknown and counted as 0), q = drafter. sum_v min(p, q) is
the probability that a draft sampled from q is accepted by speculative sampling against p, i.e.
1 - TV(p, q). Decisive positions are those that decided the window: the accepted prefix and the first
rejected position (positions after the first rejection changed nothing). Averaged, not summed, so that
the term stays in [0, 1] whatever the window length (a choice; the paper does not fix it).
"""

import json
import os

import torch

PROFILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles")


def profile_path(name_or_path):
    """A cost profile JSON: a path, or the name of one packaged in ppow/train/profiles/ (e.g.
    "h200-gemma3-270m", measured on an H200; what a GPU user's reward should count)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    packaged = os.path.join(PROFILES, os.path.basename(name_or_path).removesuffix(".json") + ".json")
    if os.path.isfile(packaged):
        return packaged
    names = sorted(f[:-5] for f in os.listdir(PROFILES) if f.endswith(".json")) if os.path.isdir(PROFILES) else []
    raise FileNotFoundError(f"no cost profile {name_or_path!r}: not a file, nor a packaged profile "
                            f"({', '.join(names) or 'none'})")


class CostModel:
    """T_target(n) for a verify pass over n tokens, T_draft(1) and (feature drafters) the catch-up cost
    per committed position T_c, in ms (or any common unit): `Generator.cost_profile()`'s JSON.

    target_ms: {n: ms} measured points; between points linear interpolation, beyond the last point linear
    extrapolation with the slope of the last two points (a single point: T(n) = T(1) * n).
    """

    def __init__(self, target_ms, draft_ms, catchup_ms=None):
        pts = sorted((int(n), float(v)) for n, v in target_ms.items())
        if not pts or pts[0][0] != 1:
            raise ValueError("cost profile needs target_ms for n=1")
        self.pts, self.draft_ms = pts, float(draft_ms)
        self.catchup_ms = None if catchup_ms is None else float(catchup_ms)

    @classmethod
    def from_json(cls, path):
        """From `Generator.cost_profile()`'s JSON (a path or a packaged profile's name, profile_path)."""
        path = profile_path(path)
        with open(path) as f:
            try:
                d = json.load(f)
            except ValueError as e:
                raise ValueError(f"{path}: not a cost profile (invalid JSON: {e})") from None
        if not isinstance(d, dict) or not isinstance(d.get("target_ms"), dict) or "draft_ms" not in d:
            raise ValueError(f'{path}: a cost profile needs {{"target_ms": {{"1": ..}}, "draft_ms": ..}}')
        return cls(d["target_ms"], d["draft_ms"], d.get("catchup_ms"))

    @classmethod
    def linear(cls, t1, per_token, draft_ms):
        return cls({1: t1, 2: t1 + per_token}, draft_ms)

    def target(self, n):
        n = int(n)
        xs = [p[0] for p in self.pts]
        if n in xs:
            return self.pts[xs.index(n)][1]
        if len(self.pts) == 1:
            return self.pts[0][1] * n
        for (x0, y0), (x1, y1) in zip(self.pts, self.pts[1:]):
            if x0 <= n <= x1:
                return y0 + (y1 - y0) * (n - x0) / (x1 - x0)
        (x0, y0), (x1, y1) = self.pts[-2], self.pts[-1]
        return y1 + (y1 - y0) / (x1 - x0) * (n - x1)

    def window_ms(self, k, a):
        """C(k, a): one verify step drafting k tokens of which a are accepted (a may be an expectation)."""
        if self.catchup_ms is None:
            return self.target(k + 1) + k * self.draft_ms
        return self.target(k + 1) + max(k - 1, 0) * self.draft_ms + (a + 1.0) * self.catchup_ms

    def speedup(self, k, a):
        """(a + 1) T_t(1) / C(k, a): tokens per plain-step time of a window of k with a accepted."""
        return (a + 1.0) * self.target(1) / self.window_ms(k, a)

    def to_dict(self):
        d = {"target_ms": {str(n): v for n, v in self.pts}, "draft_ms": self.draft_ms}
        if self.catchup_ms is not None:
            d["catchup_ms"] = self.catchup_ms
        return d


def accepted_length(draft, target_tokens, k):
    """Greedy verification. draft, target_tokens [B,K] (same ids), k [B] window lengths (<= K).

    a = number of leading positions j < k with draft[j] == target_tokens[j].
    """
    K = draft.shape[1]
    j = torch.arange(K, device=draft.device)
    match = (draft == target_tokens) & (j[None, :] < k[:, None])
    return torch.cumprod(match.long(), dim=1).sum(1)


def decisive_mask(a, k, K):
    """[B,K] bool: the accepted prefix plus the first rejected position (if the window has one)."""
    j = torch.arange(K, device=a.device)
    return j[None, :] < torch.minimum(a + 1, k)[:, None]


def speedup_reward(a, k, cost):
    """Cost-Aware Speedup Reward for accepted lengths a [B] at window lengths k [B]."""
    r = [cost.speedup(kk, aa) for kk, aa in zip(k.tolist(), a.tolist())]
    return torch.tensor(r, dtype=torch.float32, device=a.device)


def overlap(p_topk, q_at_topk):
    """sum_v min(p, q) over the target's top-k support. p_topk, q_at_topk [..., K] -> [...]."""
    return torch.minimum(p_topk, q_at_topk).sum(-1)


def proximity_reward(p_topk, q_at_topk, mask):
    """Mean over decisive positions of sum_v min(p, q). p_topk, q_at_topk [B,K,k]; mask [B,K] -> [B]."""
    ov = overlap(p_topk, q_at_topk) * mask
    return ov.sum(1) / mask.sum(1).clamp_min(1)


def window_rewards(a, k, p_topk, q_at_topk, cost, speedup=True, proximity=True, speedup_coef=1.0,
                   proximity_coef=0.5):
    """Total reward and its parts. With the speedup reward off, the cost-unaware accepted length a+1
    takes its place (the ablation keeps a task reward; only the cost awareness is removed)."""
    K = p_topk.shape[1]
    mask = decisive_mask(a, k, K)
    r_speed = speedup_reward(a, k, cost) if speedup else (a.float() + 1.0)
    r_prox = proximity_reward(p_topk, q_at_topk, mask)
    total = speedup_coef * r_speed + (proximity_coef * r_prox if proximity else 0.0)
    return total, {"speed": r_speed, "prox": r_prox, "decisive": mask}


def group_advantages(r, group_size, norm="std", eps=1e-6):
    """Group-relative advantages: r [B*G] laid out group-major -> (r - group mean) [/ group std]."""
    g = r.view(-1, group_size)
    adv = g - g.mean(1, keepdim=True)
    if norm == "std":
        adv = adv / (g.std(1, unbiased=False, keepdim=True) + eps)
    elif norm != "none":
        raise ValueError(f"unknown advantage normalisation {norm!r}")
    return adv.view(-1)
