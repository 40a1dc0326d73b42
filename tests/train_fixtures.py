"""A tiny synthetic target with planted hard-to-draft positions, fully in PyTorch (for the trainer tests).

Vocabulary (40): 0 BOS, 1 EOS, 2 PAD, 3 UNK, 4/5 mode tokens A/B, 6..39 "normal" tokens.
The target walks a fixed cycle of 6 segments  m -> (X_m | Y_m) -> w -> z -> next m  (30 tokens); on every
token but a marker m it puts 0.85 on its successor (easy: a bigram). After a marker its next token
depends on the MODE token at position 1 of the sequence - long-range context that a drafter with a
2-token context never sees:
    mode A: p(X_m) = 0.36, p(Y_m) = 0.34  -> greedy X_m
    mode B: p(Y_m) = 0.92, p(X_m) = 0.02  -> greedy Y_m
Both X_m and Y_m lead to the same w, so both modes walk segments of equal length, and a 2-token context
at a marker is always (z, m): nothing in it tells the mode. Prompts use mode A with probability 0.6.

Why this separates window-level RL from token-level KD: a drafter that cannot see the mode should draft
X_m (accepted 60% of the time). Token-level KD with its KL term matches the target's averaged
*distribution*, whose mass favours Y_m (0.6*0.34 + 0.4*0.92 = 0.57 vs 0.6*0.36 + 0.4*0.02 = 0.22); CE + KL
together still favour Y_m (0.486 vs 0.412), so KD drafts Y_m (accepted 40%). A marker every 4 tokens makes
that first rejection truncate most windows. PPOW optimises acceptance itself and should move the drafter
to X_m, which shows up in held-out tau.
"""

import torch

from ppow.train.cache import Cache, build_cache
from ppow.train.data import TorchTarget

V = 40
BOS, EOS, PAD, UNK, MODE_A, MODE_B = 0, 1, 2, 3, 4, 5
NORMAL = list(range(6, V))
CTX = 2  # drafter context used in the tests
N_SEG = 6


def _layout():
    g = torch.Generator().manual_seed(1234)
    toks = torch.tensor(NORMAL)[torch.randperm(len(NORMAL), generator=g)].tolist()
    segs = [dict(m=toks[5 * i], x=toks[5 * i + 1], y=toks[5 * i + 2], w=toks[5 * i + 3], z=toks[5 * i + 4])
            for i in range(N_SEG)]
    return segs, toks[5 * N_SEG:]


SEGS, SPARE = _layout()
MARKERS = {s["m"]: (s["x"], s["y"]) for s in SEGS}


def _successor():
    nxt = {}
    for i, s in enumerate(SEGS):
        nxt[s["x"]] = nxt[s["y"]] = s["w"]
        nxt[s["w"]] = s["z"]
        nxt[s["z"]] = SEGS[(i + 1) % N_SEG]["m"]
    for t in SPARE:
        nxt[t] = SEGS[0]["m"]
    return nxt


SUCC = _successor()


def _tables():
    """Next-token distributions [V,V] for mode A and mode B, indexed by the current token."""
    tabs = []
    for mode in ("A", "B"):
        P = torch.full((V, V), 1e-4)
        for tok in NORMAL:
            row = torch.zeros(V)
            row[NORMAL] = 1.0
            if tok in MARKERS:
                x, y = MARKERS[tok]
                px, py = (0.36, 0.34) if mode == "A" else (0.02, 0.92)
                row[[x, y]] = 0
                row = row / row.sum() * (1 - px - py)
                row[x], row[y] = px, py
            else:
                nxt = SUCC[tok]
                row[nxt] = 0
                row = row / row.sum() * 0.15
                row[nxt] = 0.85
            P[tok] = row + 1e-4
        # BOS -> a mode token; mode token -> a marker (prompts override both anyway)
        P[BOS, MODE_A], P[BOS, MODE_B] = 0.6, 0.4
        P[MODE_A, SEGS[0]["m"]] = P[MODE_B, SEGS[0]["m"]] = 1.0
        tabs.append(P / P.sum(-1, keepdim=True))
    return tabs


P_A, P_B = _tables()


def target_logits(ids):
    """ids [1,T] -> logits [1,T,V]: the synthetic target's next-token logits at every position."""
    ids = ids[0]
    mode_b = len(ids) > 1 and int(ids[1]) == MODE_B
    P = P_B if mode_b else P_A
    return torch.log(P[ids])[None]


def make_target(identity="synthetic-target-v1"):
    return TorchTarget(target_logits, V, identity, bos_id=BOS, eos_id=EOS, unk_id=UNK, pad_id=PAD)


def make_prompts(n, seed, prompt_len=8, p_mode_a=0.6):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        mode = MODE_A if float(torch.rand(1, generator=g)) < p_mode_a else MODE_B
        body = torch.tensor(NORMAL)[torch.randint(len(NORMAL), (prompt_len,), generator=g)].tolist()
        out.append({"ids": [BOS, mode] + body, "category": "modeA" if mode == MODE_A else "modeB", "id": str(i)})
    return out


def make_cache(path, n, seed, max_new=40, topk=8, target=None):
    build_cache(target or make_target(), str(path), make_prompts(n, seed), max_new=max_new, prompt_tail=0,
                topk=topk, shard_size=64, progress=False)
    return Cache(str(path))
