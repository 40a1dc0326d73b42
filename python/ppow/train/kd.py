"""Stage 1, the baseline: token-level knowledge distillation, teacher-forced on the target's own text.

loss = ce_coef * CE(drafter, target's greedy token) + kl_coef * KL(p_topk || q)
p_topk is the target's cached top-k distribution renormalised over its top-k (and, with a reduced draft
vocabulary, over the part of it inside the draft vocabulary); q is the drafter's full softmax.
"""

import torch
import torch.nn.functional as F

from . import model as M
from .common import step_generator
from .vocab import IdentityVocab, build_draft_vocab


def sample_chunks(cache, n, chunk_len, generator, continuation_only=False):
    """n chunk start positions, uniform over (eligible) positions; a chunk runs to chunk_len or its sequence end."""
    if continuation_only:
        pos_in_seq = torch.arange(len(cache)) - cache.seq_start[cache.seq_of]
        elig = torch.nonzero(pos_in_seq >= cache.prompt_len[cache.seq_of] - 1).flatten()
    else:
        elig = torch.arange(len(cache))
    starts = elig[torch.randint(len(elig), (n,), generator=generator)]
    ends = torch.minimum(starts + chunk_len, cache.seq_end[starts])
    return starts, ends


def kd_batch(cache, vocab, starts, ends):
    """Left-padded chunks: x [B,T] draft ids, mask [B,T], labels [B,T], p_ids [B,T,K], p [B,T,K]."""
    B = len(starts)
    T = int((ends - starts).max())
    K = cache.topk
    x = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    labels = torch.full((B, T), -100, dtype=torch.long)
    p_ids = torch.zeros(B, T, K, dtype=torch.long)
    p = torch.zeros(B, T, K)
    for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        n = e - s
        x[i, T - n:] = vocab.to_draft_input(cache.tokens[s:e])
        mask[i, T - n:] = True
        labels[i, T - n:] = vocab.to_draft_label(cache.greedy[s:e])
        pi, pp = vocab.project_topk(cache.topk_ids[s:e], cache.topk_probs[s:e])
        p_ids[i, T - n:], p[i, T - n:] = pi, pp
    return x, mask, labels, p_ids, p


def kd_loss(logits, mask, labels, p_ids, p, ce_coef=1.0, kl_coef=1.0):
    """(loss, metrics). logits [B,T,V]."""
    logq = torch.log_softmax(logits.float(), -1)
    lab = torch.where(mask, labels, torch.full_like(labels, -100))
    ce = F.nll_loss(logq.reshape(-1, logq.shape[-1]), lab.reshape(-1), ignore_index=-100)
    mass = p.sum(-1)
    valid = mask & (mass > 0)
    pn = p / mass.clamp_min(1e-12)[..., None]
    lq = logq.gather(-1, p_ids)
    kl_pos = (pn * (torch.log(pn.clamp_min(1e-12)) - lq)).sum(-1)  # p=0 terms vanish (0 * finite)
    kl = (kl_pos * valid).sum() / valid.sum().clamp_min(1)
    acc = ((logq.argmax(-1) == lab) & (lab >= 0)).sum() / (lab >= 0).sum().clamp_min(1)
    loss = ce_coef * ce + kl_coef * kl
    return loss, {"loss": loss.detach(), "ce": ce.detach(), "kl": kl.detach(), "top1": acc}


def make_step_fn(cache, vocab, args, rank=0):
    def step_fn(tr, step):
        g = step_generator(args.seed, step, rank)
        starts, ends = sample_chunks(cache, args.batch_size, args.chunk_len, g, args.kd_positions == "continuation")
        x, mask, labels, p_ids, p = (t.to(tr.device) for t in kd_batch(cache, vocab, starts, ends))
        logits, _ = tr.ddp(x, key_mask=mask)
        loss, metrics = kd_loss(logits, mask, labels, p_ids, p, args.ce_coef, args.kl_coef)
        metrics["grad_norm"] = tr.update(loss)
        metrics["tokens"] = int(mask.sum())
        return metrics

    return step_fn


def build_vocab(cache, n):
    """Full target vocabulary (n == 0) or the n most frequent tokens of the cache plus the specials."""
    tv = int(cache.meta["target"]["vocab_size"])
    if not n or n >= tv:
        return IdentityVocab(tv)
    t = cache.meta["target"]
    return build_draft_vocab(cache.token_counts(tv), n, special_ids=(t.get("bos"), t.get("eos"), t.get("unk"), t.get("pad")),
                             unk_id=t.get("unk"), pad_id=t.get("pad"))


def build_drafter(cache, vocab, args, target_embed=None):
    """A fresh drafter sized by args; embeddings from the target's (PCA) or random."""
    t = cache.meta["target"]

    def dmap(tid):
        if tid is None:
            return None
        d = vocab.to_draft_label(torch.tensor([tid]), ignore_index=-1)
        return int(d[0]) if int(d[0]) >= 0 else None

    cfg = M.make_config(
        vocab_size=vocab.size, hidden_size=args.hidden, intermediate_size=args.intermediate or 3 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads or args.heads,
        max_position_embeddings=args.max_positions, tie_word_embeddings=args.tie_embeddings,
        rope_theta=args.rope_theta, bos_token_id=dmap(t.get("bos")), eos_token_id=dmap(t.get("eos")),
        pad_token_id=dmap(t.get("pad")))
    torch.manual_seed(args.seed)
    model = M.Drafter(cfg)
    kept = None
    if args.init_embed == "target":
        if target_embed is None:
            raise ValueError("--init-embed target needs the target (--target)")
        kept = M.init_embeddings_from_matrix(model, target_embed, vocab.d2t, seed=args.seed)
    return model, kept
