"""Reduced draft vocabulary: the drafter predicts over the N most frequent target tokens only.

A 262k-token output layer dominates a small drafter's cost, so `--draft-vocab N` keeps the N most
frequent target tokens of the training data (plus the target's special tokens). The checkpoint stores
`draft_vocab.safetensors` with int64 `d2t` (draft id -> target id, length N); the converter carries it
into the GGUF and the runtime maps drafted ids back through it.

Conventions (shared by training, eval and the converter):
- target tokens outside the set map to the draft UNK id on input (`unk_draft_id`: the draft id of the
  target's UNK token if it has one, else of its PAD, else 0);
- a position whose target token is outside the set cannot be drafted; training ignores it in the
  cross-entropy and drops out-of-set ids from the top-k distribution (renormalising the rest).
"""

import os

import torch
from safetensors.torch import load_file, save_file

FILENAME = "draft_vocab.safetensors"
MAX_VOCAB = 1 << 24  # far above real vocabularies; t2d holds one id per target token


class DraftVocab:
    def __init__(self, d2t, target_vocab_size, unk_draft_id=0):
        self.d2t = torch.as_tensor(d2t, dtype=torch.int64)
        self.target_vocab_size = int(target_vocab_size)
        if len(torch.unique(self.d2t)) != len(self.d2t):
            raise ValueError("d2t has duplicate target ids")
        if len(self.d2t) and (self.d2t.min() < 0 or self.d2t.max() >= self.target_vocab_size):
            raise ValueError("d2t has ids outside the target vocabulary")
        self.unk_draft_id = int(unk_draft_id)
        # t2d: target id -> draft id, -1 where the target token is not in the draft vocabulary
        self.t2d = torch.full((self.target_vocab_size,), -1, dtype=torch.int64)
        self.t2d[self.d2t] = torch.arange(len(self.d2t))

    @property
    def size(self):
        return len(self.d2t)

    def to_draft_input(self, target_ids):
        """Target ids -> draft ids for the drafter's input; unknown tokens become UNK."""
        d = self.t2d[torch.as_tensor(target_ids, dtype=torch.int64)]
        return torch.where(d < 0, torch.full_like(d, self.unk_draft_id), d)

    def to_draft_label(self, target_ids, ignore_index=-100):
        """Target ids -> draft ids for losses; tokens outside the set become ignore_index."""
        d = self.t2d[torch.as_tensor(target_ids, dtype=torch.int64)]
        return torch.where(d < 0, torch.full_like(d, ignore_index), d)

    def to_target(self, draft_ids):
        return self.d2t[torch.as_tensor(draft_ids, dtype=torch.int64)]

    def project_topk(self, topk_ids, topk_probs):
        """Target top-k (ids, probs) -> draft ids and probs; out-of-set entries get id 0 and prob 0.

        Probabilities are NOT renormalised here (the KD loss renormalises; rewards want true mass).
        """
        d = self.t2d[topk_ids.long()]
        keep = d >= 0
        return torch.where(keep, d, torch.zeros_like(d)), torch.where(keep, topk_probs.float(), torch.zeros_like(topk_probs.float()))


class IdentityVocab(DraftVocab):
    """The drafter shares the target's full vocabulary (no id mapping)."""

    def __init__(self, vocab_size):
        self.d2t = None
        self.target_vocab_size = int(vocab_size)
        self.unk_draft_id = 0

    @property
    def size(self):
        return self.target_vocab_size

    def to_draft_input(self, target_ids):
        return torch.as_tensor(target_ids, dtype=torch.int64)

    def to_draft_label(self, target_ids, ignore_index=-100):
        return torch.as_tensor(target_ids, dtype=torch.int64)

    def to_target(self, draft_ids):
        return torch.as_tensor(draft_ids, dtype=torch.int64)

    def project_topk(self, topk_ids, topk_probs):
        return topk_ids.long(), topk_probs.float()


def same_vocab(a, b):
    """Whether two draft vocabularies map draft ids to the same target ids."""
    da, db = getattr(a, "d2t", None), getattr(b, "d2t", None)
    if da is None or db is None:
        return da is None and db is None and a.size == b.size
    return torch.equal(da, db)


def build_draft_vocab(counts, n, special_ids=(), unk_id=None, pad_id=None):
    """The n most frequent target ids (counts: tensor [Vt]) plus the specials, specials first.

    Ties are broken by the lower target id so the choice is deterministic.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    specials = []
    for s in special_ids:
        if s is not None and 0 <= int(s) < len(counts) and int(s) not in specials:
            specials.append(int(s))
    if n < len(specials) + 1:
        raise ValueError(f"--draft-vocab {n} is too small for {len(specials)} special tokens")
    n = min(n, len(counts))
    c = counts.clone()
    c[specials] = -1  # already placed
    # stable sort by (-count, id)
    order = torch.argsort(-c, stable=True)
    rest = [int(i) for i in order[: n - len(specials)]]
    d2t = torch.tensor(specials + rest, dtype=torch.int64)
    unk = 0
    for cand in (unk_id, pad_id):
        if cand is not None and int(cand) in specials:
            unk = specials.index(int(cand))
            break
    return DraftVocab(d2t, len(counts), unk)


def save_draft_vocab(vocab, ckpt_dir):
    if vocab.d2t is None:
        return
    save_file(
        {"d2t": vocab.d2t.contiguous(), "unk_draft_id": torch.tensor([vocab.unk_draft_id], dtype=torch.int64),
         "target_vocab_size": torch.tensor([vocab.target_vocab_size], dtype=torch.int64)},
        os.path.join(ckpt_dir, FILENAME),
    )


def load_draft_vocab(ckpt_dir, target_vocab_size=None):
    """DraftVocab from a checkpoint dir, or IdentityVocab(target_vocab_size) if it has none."""
    path = os.path.join(ckpt_dir, FILENAME)
    if not os.path.exists(path):
        if not isinstance(target_vocab_size, int) or not 0 < target_vocab_size <= MAX_VOCAB:
            raise ValueError(f"{ckpt_dir} has no {FILENAME} and the target vocabulary size is unknown")
        return IdentityVocab(target_vocab_size)
    try:
        t = load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type on a bad file
        raise ValueError(f"{path}: unreadable safetensors file ({str(e)[:200]})") from None

    def one_int(key, default):
        if key not in t:
            return default
        v = t[key]
        if v.numel() != 1 or v.dtype.is_floating_point or v.dtype == torch.bool:
            raise ValueError(f"{path}: {key} must be one integer, got {v.dtype} {list(v.shape)}")
        return int(v.reshape(-1)[0])

    d2t = t.get("d2t")
    if d2t is None or d2t.dim() != 1 or len(d2t) == 0 or d2t.dtype.is_floating_point or d2t.dtype == torch.bool:
        raise ValueError(f"{path} must hold a non-empty 1-D integer tensor 'd2t'")
    tv = one_int("target_vocab_size", target_vocab_size)
    if target_vocab_size is not None and tv != target_vocab_size:
        raise ValueError(f"{path}: made for a target vocabulary of {tv} tokens, this target has {target_vocab_size}")
    if not isinstance(tv, int) or not 0 < tv <= MAX_VOCAB:
        raise ValueError(f"{path}: target vocabulary size {tv!r} is unknown or out of range")
    unk = one_int("unk_draft_id", 0)
    if not 0 <= unk < len(d2t):
        raise ValueError(f"{path}: unk_draft_id {unk} is outside the draft vocabulary [0, {len(d2t)})")
    return DraftVocab(d2t, tv, unk)
