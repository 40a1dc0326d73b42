"""Stage 1, the baseline: token-level knowledge distillation, teacher-forced on the target's own text.

loss = ce_coef * CE(drafter, target's greedy token) + kl_coef * KL(p_topk || q)
p_topk is the target's cached top-k distribution renormalised over its top-k (and, with a reduced draft
vocabulary, over the part of it inside the draft vocabulary); q is the drafter's full softmax.

Feature drafters (EAGLE-3) are unrolled on their own states for `ttt_steps` steps (the training-time
test, feature_model.FeatureDrafter.forward); step i's loss has weight ttt_decay**i. Token inputs of
the unrolled steps are the trajectory's tokens (see README.md, "Feature drafters").
"""

import torch
import torch.nn.functional as F

from . import model as M
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
    if (lab >= 0).any():
        ce = F.nll_loss(logq.reshape(-1, logq.shape[-1]), lab.reshape(-1), ignore_index=-100)
    else:  # nothing to learn in this batch (nll_loss would give 0/0)
        ce = logq.sum() * 0
    mass = p.sum(-1)
    valid = mask & (mass > 0)
    pn = p / mass.clamp_min(1e-12)[..., None]
    lq = logq.gather(-1, p_ids)
    kl_pos = (pn * (torch.log(pn.clamp_min(1e-12)) - lq)).sum(-1)  # p=0 terms vanish (0 * finite)
    kl = (kl_pos * valid).sum() / valid.sum().clamp_min(1)
    acc = ((logq.argmax(-1) == lab) & (lab >= 0)).sum() / (lab >= 0).sum().clamp_min(1)
    loss = ce_coef * ce + kl_coef * kl
    return loss, {"loss": loss.detach(), "ce": ce.detach(), "kl": kl.detach(), "top1": acc}


def feature_chunks(cache, n, chunk_len, generator, label_rows):
    """n chunks of entry columns [s, e) for the feature drafter, each inside one sequence.

    A learnable column c (its label row c+1 in label_rows) is drawn uniformly; its chunk is its whole
    sequence when that fits chunk_len (0 = always), so the drafter attends to the same entries as at
    runtime, else a random chunk_len window around c. Columns stop at seq_end - 2 (entry c needs token[c+1]).
    """
    N = len(cache)
    col = torch.arange(N)
    elig = torch.nonzero((col + 1 < cache.seq_end) & label_rows[(col + 1).clamp(max=N - 1)]).flatten()
    if len(elig) == 0:
        raise ValueError("the cache has no position to learn from (no scored rows? try --kd-positions all)")
    c = elig[torch.randint(len(elig), (n,), generator=generator)]
    s0, e0 = cache.seq_start[cache.seq_of[c]], cache.seq_end[c] - 1
    if chunk_len <= 0:
        return s0, e0
    lo = torch.maximum(s0, c - chunk_len + 1)
    hi = torch.maximum(lo, torch.minimum(c, e0 - chunk_len))
    s = lo + (torch.rand(n, generator=generator) * (hi - lo + 1)).long().clamp(max=hi - lo)
    return s, torch.minimum(s + chunk_len, e0)


def ttt_batch(cache, vocab, starts, ends, steps, label_rows):
    """Left-padded chunks for the unrolled feature drafter.

    feats [B,T,3Ht] (target features of entries p), key_mask [B,T], and per step i [S,B,T(,K)]: column p
    at step i is the entry at position p+i, fed token[p+1+i] (the trajectory's token); its label is the
    target's next token at row p+1+i (greedy, draft ids, -100 where not learnable) with that row's
    top-k (p_ids, p) projected to the draft vocabulary; valid marks learnable entries.
    """
    B, T, S, K = len(starts), int((ends - starts).max()), steps, cache.topk
    feats = torch.zeros(B, T, cache.hidden.shape[1] * cache.hidden.shape[2])
    key_mask = torch.zeros(B, T, dtype=torch.bool)
    toks = torch.zeros(S, B, T, dtype=torch.long)
    labels = torch.full((S, B, T), -100, dtype=torch.long)
    p_ids = torch.zeros(S, B, T, K, dtype=torch.long)
    p = torch.zeros(S, B, T, K)
    valid = torch.zeros(S, B, T, dtype=torch.bool)
    for b, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        n, end = e - s, int(cache.seq_end[s])
        feats[b, T - n:] = cache.hidden[s:e].reshape(n, -1).float()
        key_mask[b, T - n:] = True
        for i in range(S):
            r = torch.arange(s, e) + 1 + i
            ok = r < end
            r = torch.where(ok, r, torch.full_like(r, s))  # an in-range row; masked out below
            good = ok & label_rows[r]
            toks[i, b, T - n:] = torch.where(ok, cache.tokens[r], 0)
            labels[i, b, T - n:] = torch.where(good, vocab.to_draft_label(cache.greedy[r]), -100)
            pi, pp = vocab.project_topk(cache.topk_ids[r], cache.topk_probs[r])
            p_ids[i, b, T - n:], p[i, b, T - n:] = pi, pp * good[:, None]
            valid[i, b, T - n:] = good
    return feats, key_mask, toks, labels, p_ids, p, valid


def ttt_loss(logits, valid, labels, p_ids, p, ce_coef=1.0, kl_coef=1.0, decay=0.8):
    """sum_i decay**i * kd_loss(step i) over the unrolled steps; metrics of every step."""
    loss, metrics = 0.0, {}
    for i, lg in enumerate(logits):
        li, mi = kd_loss(lg, valid[i], labels[i], p_ids[i], p[i], ce_coef, kl_coef)
        loss = loss + decay ** i * li
        for k in ("ce", "kl", "top1"):
            metrics[k if i == 0 else f"{k}_{i}"] = mi[k]
    metrics["loss"] = loss.detach()
    return loss, metrics


def standalone_kd_loss(model, cache, vocab, args, g, device):
    """One KD batch of the standalone drafter: (loss, metrics)."""
    starts, ends = sample_chunks(cache, args.batch_size, args.chunk_len, g, args.kd_positions == "continuation")
    x, mask, labels, p_ids, p = (t.to(device) for t in kd_batch(cache, vocab, starts, ends))
    logits, _ = model(x, key_mask=mask)
    loss, metrics = kd_loss(logits, mask, labels, p_ids, p, args.ce_coef, args.kl_coef)
    metrics["tokens"] = int(mask.sum())
    return loss, metrics


def feature_kd_loss(model, cache, vocab, args, g, device):
    """One KD batch of the feature drafter, unrolled for args.ttt_steps: (loss, metrics)."""
    rows = cache.scored if args.kd_positions in ("continuation", None) else torch.ones_like(cache.scored)
    starts, ends = feature_chunks(cache, args.batch_size, args.chunk_len, g, rows)
    feats, key_mask, toks, labels, p_ids, p, valid = (
        t.to(device) for t in ttt_batch(cache, vocab, starts, ends, args.ttt_steps, rows))
    logits = model(feats, list(toks), key_mask)
    loss, metrics = ttt_loss(logits, valid, labels, p_ids, p, args.ce_coef, args.kl_coef, args.ttt_decay)
    metrics["tokens"] = int(valid[0].sum())
    return loss, metrics


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
        head_dim=getattr(args, "head_dim", 0) or None,
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


def build_feature_drafter(cache, vocab, args, target):
    """A fresh feature (EAGLE-3) drafter for the cache's target; target = feature_model.read_target(...)."""
    from . import feature_model as FM

    if cache.hidden is None or not cache.layers or len(cache.layers) != 3:
        raise ValueError(f"a feature drafter trains on a cache with exactly 3 feature layers (this one has "
                         f"{cache.layers}): build it with `ppow-train data --backend engine --layers a,b,c`")
    Ht, Vt = int(cache.hidden.shape[2]), int(cache.meta["target"]["vocab_size"])
    if (target["hidden_size"], target["vocab_size"]) != (Ht, Vt):
        raise ValueError(f"the target has hidden size {target['hidden_size']} and {target['vocab_size']} tokens, "
                         f"the cache {Ht} and {Vt}: not the cache's target")
    if args.hidden and args.hidden != Ht:
        raise ValueError(f"--hidden {args.hidden}: a feature drafter's hidden size is the target's ({Ht}), "
                         "because llama.cpp feeds it the target's token embedding rows")
    if args.layers != 1:
        raise ValueError("a feature drafter has exactly one layer (llama.cpp's eagle3 graph)")
    if args.tie_embeddings or args.init_embed == "target":
        raise ValueError("--tie-embeddings/--init-embed are for the standalone kind (a feature drafter borrows the "
                         "target's embeddings and starts its head from the target's)")
    cfg = FM.make_config(
        hidden_size=Ht, target_hidden_size=Ht, target_layers=cache.layers, target_vocab_size=Vt,
        draft_vocab_size=vocab.size, intermediate_size=args.intermediate or None, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads or None, head_dim=args.head_dim or None, rms_norm_eps=target["rms_norm_eps"],
        rope_theta=args.rope_theta or target["rope_theta"], max_position_embeddings=args.max_positions,
        norm_before_residual=args.norm_before_residual, norm_before_fc=args.norm_before_fc)
    torch.manual_seed(args.seed)
    model = FM.FeatureDrafter(cfg)
    model.set_embeddings(target["embed"])
    model.set_d2t(vocab.d2t)
    FM.init_from_target(model, target, vocab.d2t)
    return model
