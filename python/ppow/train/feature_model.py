"""The feature drafter (EAGLE-3), written as llama.cpp's `eagle3` graph computes it
(vendor/llama.cpp/src/models/eagle3.cpp), so `ppow-convert drafter` writes its weights as they are.

Conventions (the runtime matches these; `reference_draft_logits` below computes them in one call):
- features f[p] = concat(hidden_states[l][p] for l in target_layers), 3·Ht floats, in target_layers
  order (HF numbering: hidden_states[k] is the input of target layer k).
- encoder: g = fc(f), no bias; with norm_before_fc: g = fc(RMSNorm(f)·input_norm).
- decoder, one layer, for an entry (token t, state s) at position q:
    e  = E_target[t]                 the target's token_embd row, NOT scaled (Gemma's own graph scales by
                                     sqrt(n_embd); the borrowed row in the eagle3 graph is not); frozen
    sn = RMSNorm(s)·hidden_norm      (GGUF attn_norm_2)
    x  = concat(RMSNorm(e)·input_layernorm, sn)               2H wide, embedding first
    q, k, v = Wq x, Wk x, Wv x       no bias; RoPE of ggml's NORM type on q and k: adjacent pairs
                                     (2i, 2i+1) rotated by q_pos·base^(-2i/head_dim); base = the target's
    a  = softmax(q·kᵀ/sqrt(head_dim), causal over the drafter's own entries)·v; GQA: query head h reads
         kv head h // (n_head / n_head_kv)
    h  = Wo a + (sn if norm_before_residual else s)
    h2 = h + W_down(silu(W_gate n) * W_up n),  n = RMSNorm(h)·post_attention_layernorm (GGUF ffn_norm)
    logits = lm_head(RMSNorm(h2)·norm) over the draft vocabulary (row i = target token d2t[i]);
    prenorm = h2 is the state of the next draft step.   RMSNorm: x / sqrt(mean(x²) + eps).
- pairing (llama.cpp common/speculative.cpp): the entry at position p holds (token[p+1], g[p]) and
  predicts token[p+2]; a draft step feeds (its drafted token, the previous entry's prenorm).
H must equal the target's hidden size: llama.cpp borrows the target's token_embd rows (no token_embd
in the drafter GGUF). q/k weights are stored for adjacent-pair RoPE, i.e. already in llama.cpp's layout
(HF EAGLE-3 checkpoints use rotate-half and need llama.cpp's permute; ours do not).
"""

import json

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import MLP, RMSNorm

ARCHITECTURE = "PpowEagle3Drafter"
MODEL_TYPE = "ppow_eagle3"

DEFAULT_CONFIG = dict(
    hidden_size=None,  # = target_hidden_size (the borrowed embedding rows are H wide)
    target_hidden_size=None,
    target_layers=None,  # exactly 3 hidden_states indices of the target
    target_vocab_size=None,
    draft_vocab_size=None,  # rows of lm_head (len(d2t), or the target vocabulary)
    intermediate_size=None,  # None: 3 x hidden_size
    num_hidden_layers=1,  # the eagle3 graph has exactly one
    num_attention_heads=4,
    num_key_value_heads=None,  # None: num_attention_heads
    head_dim=None,  # None: hidden_size // num_attention_heads
    rms_norm_eps=1e-6,
    rope_theta=10000.0,  # the target's rope.freq_base
    max_position_embeddings=8192,
    norm_before_residual=False,
    norm_before_fc=False,
    initializer_range=0.02,
)


def make_config(**kw):
    cfg = dict(DEFAULT_CONFIG)
    unknown = set(kw) - set(cfg)
    if unknown:
        raise ValueError(f"unknown feature drafter config fields: {sorted(unknown)}")
    cfg.update(kw)
    for k in ("hidden_size", "target_hidden_size", "target_layers", "target_vocab_size"):
        if cfg[k] is None:
            raise ValueError(f"feature drafter config needs {k}")
    if cfg["hidden_size"] != cfg["target_hidden_size"]:
        raise ValueError(f"feature drafter hidden size {cfg['hidden_size']} must equal the target's "
                         f"{cfg['target_hidden_size']}: llama.cpp feeds it the target's token embedding rows")
    if len(cfg["target_layers"]) != 3:
        raise ValueError(f"llama.cpp's eagle3 takes exactly 3 target layers, got {cfg['target_layers']}")
    if cfg["num_hidden_layers"] != 1:
        raise ValueError("llama.cpp's eagle3 graph has exactly one decoder layer")
    cfg["target_layers"] = [int(x) for x in cfg["target_layers"]]
    cfg["draft_vocab_size"] = cfg["draft_vocab_size"] or cfg["target_vocab_size"]
    cfg["intermediate_size"] = cfg["intermediate_size"] or 3 * cfg["hidden_size"]
    cfg["num_key_value_heads"] = cfg["num_key_value_heads"] or cfg["num_attention_heads"]
    cfg["head_dim"] = cfg["head_dim"] or cfg["hidden_size"] // cfg["num_attention_heads"]
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    if cfg["head_dim"] % 2:
        raise ValueError("head_dim must be even (RoPE rotates pairs)")
    return cfg


def save_config(cfg, path):
    d = dict(cfg, architectures=[ARCHITECTURE], model_type=MODEL_TYPE, hidden_act="silu",
             rope_pairs="adjacent", torch_dtype="float32")
    with open(path, "w") as f:
        json.dump(d, f, indent=2)


def load_config(path):
    with open(path) as f:
        d = json.load(f)
    if d.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{path}: not a feature drafter config (model_type={d.get('model_type')})")
    return make_config(**{k: d[k] for k in DEFAULT_CONFIG if k in d})


def rope_norm(x, pos, theta):
    """ggml's NORM RoPE: rotate adjacent pairs (x[2i], x[2i+1]) by pos·theta^(-2i/d). x [B,h,T,d], pos [T]."""
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d)
    ang = pos.float()[:, None] * inv[None, :]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2)


class Attention(nn.Module):
    """q/k/v read the 2H-wide concat; attention under an explicit boolean mask (True = attend)."""

    def __init__(self, cfg):
        super().__init__()
        h2, hd = 2 * cfg["hidden_size"], cfg["head_dim"]
        self.nh, self.nkv, self.hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], hd
        self.theta = cfg["rope_theta"]
        self.q_proj = nn.Linear(h2, self.nh * hd, bias=False)
        self.k_proj = nn.Linear(h2, self.nkv * hd, bias=False)
        self.v_proj = nn.Linear(h2, self.nkv * hd, bias=False)
        self.o_proj = nn.Linear(self.nh * hd, cfg["hidden_size"], bias=False)

    def forward(self, x, pos, mask, kv):
        B, T, _ = x.shape
        q = rope_norm(self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2), pos, self.theta)
        k = rope_norm(self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2), pos, self.theta)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        if kv is not None:
            k, v = torch.cat([kv[0], k], 2), torch.cat([kv[1], v], 2)
        r = self.nh // self.nkv
        y = F.scaled_dot_product_attention(q, k.repeat_interleave(r, 1), v.repeat_interleave(r, 1), attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.nh * self.hd)), (k, v)


class MidLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.input_layernorm = RMSNorm(H, eps)  # on the token embedding (GGUF attn_norm)
        self.hidden_norm = RMSNorm(H, eps)  # on the state (GGUF attn_norm_2)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(H, eps)  # GGUF ffn_norm
        self.mlp = MLP(cfg)


class FeatureDrafter(nn.Module):
    kind = "feature"

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        H, Ht = cfg["hidden_size"], cfg["target_hidden_size"]
        if cfg["norm_before_fc"]:
            self.input_norm = RMSNorm(3 * Ht, cfg["rms_norm_eps"])  # GGUF enc.output_norm
        self.fc = nn.Linear(3 * Ht, H, bias=False)
        self.midlayer = MidLayer(cfg)
        self.norm = RMSNorm(H, cfg["rms_norm_eps"])  # GGUF output_norm
        self.lm_head = nn.Linear(H, cfg["draft_vocab_size"], bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=cfg["initializer_range"])
        # The target's embedding and the draft->target id map: borrowed, frozen, never saved.
        self.register_buffer("embed", torch.zeros(0, H), persistent=False)
        self.register_buffer("d2t", None, persistent=False)

    def set_embeddings(self, embed):
        """The target's token_embd [Vt, H] (float32, dequantised, unscaled)."""
        if tuple(embed.shape) != (self.cfg["target_vocab_size"], self.cfg["hidden_size"]):
            raise ValueError(f"target embedding is {list(embed.shape)}, the drafter expects "
                             f"[{self.cfg['target_vocab_size']}, {self.cfg['hidden_size']}]")
        self.embed = embed.float().to(self.fc.weight.device)

    def set_d2t(self, d2t):
        if d2t is not None and len(d2t) != self.cfg["draft_vocab_size"]:
            raise ValueError(f"d2t has {len(d2t)} entries, the drafter's head {self.cfg['draft_vocab_size']} rows")
        self.d2t = None if d2t is None else torch.as_tensor(d2t, dtype=torch.long, device=self.fc.weight.device)

    def to_target(self, draft_ids):
        return draft_ids if self.d2t is None else self.d2t[draft_ids]

    def encode(self, feats):
        """[.., 3·Ht] target features -> g [.., H] (llama.cpp's encoder graph)."""
        x = feats.to(self.fc.weight.dtype)
        if self.cfg["norm_before_fc"]:
            x = self.input_norm(x)
        return self.fc(x)

    def decode(self, tokens, states, pos, mask, kv=None, head_last=False):
        """Decoder entries: tokens [B,T] target ids, states [B,T,H], pos [T] RoPE positions, mask [B,1,T,keys]
        over (kv keys + these). Returns (logits [B,T,Vd] float32, prenorm [B,T,H], kv); head_last: logits
        of the last entry only ([B,1,Vd]; the head is most of a long context's cost)."""
        if self.embed.numel() == 0:
            raise RuntimeError("the feature drafter has no target embeddings (set_embeddings)")
        L = self.midlayer
        sn = L.hidden_norm(states)
        x = torch.cat([L.input_layernorm(self.embed[tokens]), sn], -1)
        a, kv = L.self_attn(x, pos, mask, kv)
        h = a + (sn if self.cfg["norm_before_residual"] else states)
        h2 = h + L.mlp(L.post_attention_layernorm(h))
        return self.lm_head(self.norm(h2[:, -1:] if head_last else h2)).float(), h2, kv

    def forward(self, feats, tokens, key_mask, chain="all", expand=None):
        """Drafting unrolled on its own states (EAGLE-3's training-time test), one pass per step.

        feats [B,T,3Ht] target features of T left-padded entries (key_mask [B,T], True = real);
        tokens: list of S token tensors (target ids). Step 0 runs every entry on target features
        (tokens[0] [B,T]); step i > 0 feeds each column's prenorm from step i-1 with tokens[i]:
        - chain "all" (training): every column continues (tokens[i] [B,T]); column c at step i is the
          entry at position c+i and attends to step-0 keys at columns <= c and to its own steps 1..i,
          exactly the drafter's KV at runtime when a window starts after column c;
        - chain "last" (windows): only the last column continues (tokens[i] [N,1]); step 0 computes
          the head of the last column only, and `expand` [N] (indices into the B contexts) lets N windows
          share contexts (a PPOW group drafts G windows after one context: its entries run once).
        Returns a list of S logits: [B,T,Vd] each ("last": [B,1,Vd] then [N,1,Vd]).
        """
        B, T = key_mask.shape
        dev = feats.device
        pos = torch.arange(T, device=dev)
        eye = torch.eye(T, dtype=torch.bool, device=dev).expand(B, T, T)
        # a padded query sees itself (an empty softmax row would be NaN); real ones never see padding
        m0 = (torch.ones(T, T, dtype=torch.bool, device=dev).tril() & key_mask[:, None, :]) | eye
        s, kv, out = self.encode(feats), None, []
        for i, tok in enumerate(tokens):
            if i == 0:
                mask, p = m0, pos
            elif chain == "all":
                mask, p = torch.cat([m0] + [eye] * i, -1), pos + i
            else:
                s = s[:, -1:]
                if i == 1 and expand is not None:
                    s, key_mask, kv = s[expand], key_mask[expand], (kv[0][expand], kv[1][expand])
                mask = torch.cat([key_mask, key_mask.new_ones(len(key_mask), i)], -1)[:, None, :]
                p = pos[-1:] + i
            logits, s, kv = self.decode(tok, s, p, mask[:, None], kv, head_last=chain == "last" and i == 0)
            out.append(logits)
        return out


def num_params(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
# contexts and drafting (the interface in drafters.py): a context is the entries before a window


def make_context(cache, t, ctx_len=0):
    """Entries before a window that starts after committed position t: p in [lo, t), each
    (token[p+1], features[p]); returns (feats [n, 3Ht] bf16, tokens [n] target ids)."""
    s = int(cache.seq_start[cache.seq_of[t]])
    if t <= s:
        raise ValueError(f"position {t} starts its sequence: a feature drafter needs one earlier position")
    lo = s if ctx_len <= 0 else max(s, t - ctx_len)
    return cache.hidden[lo:t].reshape(t - lo, -1), cache.tokens[lo + 1:t + 1]


def unique_contexts(contexts):
    """PPOW repeats each context object G times (one per window of a group): the distinct ones, in
    order, and for each input its index among them."""
    first, index = {}, []
    for c in contexts:
        index.append(first.setdefault(id(c), len(first)))
    uniq = [None] * len(first)
    for c in contexts:
        uniq[first[id(c)]] = c
    return uniq, torch.tensor(index)


def pad_contexts(contexts, device):
    """Left-pad contexts -> feats [B,T,3Ht] float32, tokens [B,T], key_mask [B,T]."""
    T = max(len(c[1]) for c in contexts)
    D = contexts[0][0].shape[-1]
    feats = torch.zeros(len(contexts), T, D)
    toks = torch.zeros(len(contexts), T, dtype=torch.long)
    mask = torch.zeros(len(contexts), T, dtype=torch.bool)
    for i, (f, t) in enumerate(contexts):
        n = len(t)
        feats[i, T - n:], toks[i, T - n:], mask[i, T - n:] = f.float(), t, True
    return feats.to(device), toks.to(device), mask.to(device)


def forward_windows(model, contexts, cont):
    """Teacher-forced logits over windows: logits[:, j] predicts cont[:, j] (draft ids [B,k]) after
    the context entries and j own-state steps fed cont[:, :j]. Differentiable (goes through forward)."""
    core = getattr(model, "module", model)
    dev = core.fc.weight.device
    uniq, index = unique_contexts(contexts)
    feats, toks, mask = pad_contexts(uniq, dev)
    cont = cont.to(dev)
    index = index.to(dev)
    tokens = [toks] + [core.to_target(cont[:, j - 1:j]) for j in range(1, cont.shape[1])]
    expand = None if len(uniq) == len(contexts) and bool((index == torch.arange(len(index), device=dev)).all()) else index
    out = model(feats, tokens, mask, chain="last", expand=expand)
    first = out[0] if expand is None else out[0][index]
    return torch.cat([first] + out[1:], 1)


@torch.no_grad()
def draft(model, contexts, k, greedy=True, temperature=1.0, generator=None, gather_ids=None):
    """Draft k tokens per context as the runtime does (context entries on target features, then own
    states, KV cache). Same outputs as model.draft: draft ids [B,k], logp [B,k] (and q_at)."""
    from .model import sample_loop

    dev = model.fc.weight.device
    uniq, index = unique_contexts(contexts)
    feats, toks, key_mask = pad_contexts(uniq, dev)
    T = toks.shape[1]
    eye = torch.eye(T, dtype=torch.bool, device=dev)
    mask = (torch.ones(T, T, dtype=torch.bool, device=dev).tril() & key_mask[:, None, :]) | eye
    logits, s, kv = model.decode(toks, model.encode(feats), torch.arange(T, device=dev), mask[:, None], head_last=True)
    index = index.to(dev)  # the contexts' entries ran once; each window continues from its own copy
    logits, s, kv, key_mask = logits[index], s[index], (kv[0][index], kv[1][index]), key_mask[index]
    B = len(index)
    st = dict(s=s[:, -1:], kv=kv, mask=key_mask)

    def step(j, t):  # entry at position T-1+j: (drafted token, previous prenorm)
        st["mask"] = torch.cat([st["mask"], st["mask"].new_ones(B, 1)], 1)
        pos = torch.tensor([T - 1 + j], device=dev)
        lg, st["s"], st["kv"] = model.decode(model.to_target(t)[:, None], st["s"], pos, st["mask"][:, None, None, :],
                                             st["kv"])
        return lg[:, -1]

    return sample_loop(logits[:, -1], step, k, greedy, temperature, generator, gather_ids)


@torch.no_grad()
def reference_draft_logits(model, target_features, tokens, k=0, full_vocab=False):
    """What the runtime must produce, for a cross-check with the engine in one call.

    target_features [T, 3·Ht] (concatenated in target_layers order), tokens [T+1] target ids.
    Entries p < T are (tokens[p+1], fc(target_features[p])) decoded in one causal batch at positions
    0..T-1; then k greedy draft steps, each fed (its drafted token, the previous entry's prenorm) at
    positions T..T+k-1 (the first drafted token is the argmax of entry T-1). Returns a dict of float32:
      g [T,H] (encoder output, llama.cpp `fc_out`), logits [T,Vd], prenorm [T,H] (`eagle3_prenorm`),
      draft_tokens [k] target ids, draft_logits [k,Vd] (entry T-1+j's successors), draft_prenorm [k,H].
    full_vocab=True scatters every logits row into the target vocabulary with -inf elsewhere, as
    llama_get_logits_ith returns them for a GGUF with d2t.
    """
    model = model.eval()
    dev = model.fc.weight.device
    f = torch.as_tensor(target_features, dtype=torch.float32, device=dev)
    toks = torch.as_tensor(tokens, dtype=torch.long, device=dev)
    T = f.shape[0]
    if toks.shape[0] != T + 1:
        raise ValueError(f"need len(tokens) == T + 1 = {T + 1}, got {toks.shape[0]}")
    g = model.encode(f)[None]
    mask = torch.ones(T, T, dtype=torch.bool, device=dev).tril()[None, None]
    logits, pre, kv = model.decode(toks[None, 1:], g, torch.arange(T, device=dev), mask)
    d_tok, d_logits, d_pre = [], [], []
    lg, s = logits[0, -1], pre[:, -1:]
    for j in range(k):
        t = model.to_target(lg.argmax()).view(1, 1)
        lg, s, kv = model.decode(t, s, torch.tensor([T + j], device=dev),
                                 torch.ones(1, 1, 1, T + j + 1, dtype=torch.bool, device=dev), kv)
        lg = lg[0, -1]
        d_tok.append(t.view(()))
        d_logits.append(lg)
        d_pre.append(s[0, -1])
    H, V = g.shape[-1], logits.shape[-1]
    out = dict(g=g[0], logits=logits[0], prenorm=pre[0],
               draft_tokens=torch.stack(d_tok) if k else torch.zeros(0, dtype=torch.long),
               draft_logits=torch.stack(d_logits) if k else torch.zeros(0, V),
               draft_prenorm=torch.stack(d_pre) if k else torch.zeros(0, H))
    if full_vocab and model.d2t is not None:
        for key in ("logits", "draft_logits"):
            full = torch.full((out[key].shape[0], model.cfg["target_vocab_size"]), float("-inf"), device=dev)
            full[:, model.d2t] = out[key]
            out[key] = full
    return {key: v.cpu() for key, v in out.items()}


# ---------------------------------------------------------------------------------------------------
# the target's pieces the drafter borrows or starts from


def read_target(path):
    """From a target GGUF: hidden size, vocabulary, layers, rope base, rms eps and the tensors the
    feature drafter needs (token_embd dequantised [Vt, H] float32; the output rows and output_norm)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(path)

    def field(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    arch = field("general.architecture")
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise ValueError(f"{path}: no token_embd.weight tensor")

    def dequant(name):
        t = tensors[name]
        a = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        return torch.from_numpy(a.reshape([int(x) for x in reversed(t.shape)]).copy())

    embed = dequant("token_embd.weight")
    return dict(arch=arch, hidden_size=int(embed.shape[1]), vocab_size=int(embed.shape[0]),
                n_layer=int(field(f"{arch}.block_count", 0)),
                rope_theta=float(field(f"{arch}.rope.freq_base", 10000.0)),
                rms_norm_eps=float(field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)), embed=embed,
                output=dequant("output.weight") if "output.weight" in tensors else embed,
                output_norm=dequant("output_norm.weight") if "output_norm.weight" in tensors else None)


@torch.no_grad()
def init_from_target(model, target, d2t=None):
    """Start the head as the target's own output rows of the draft vocabulary (tied models: the
    token_embd rows). The final norm keeps its ones: the target's (Gemma 3 270M: mean 26, max 301)
    only suits states that already look like the target's last hidden state; on a fresh drafter's
    states it made logits so large that KD started at cross-entropy 172 and was still at 12 after
    37 steps (measured, Gemma 3 270M)."""
    rows = target["output"] if d2t is None else target["output"][torch.as_tensor(d2t)]
    model.lm_head.weight.copy_(rows)


@torch.no_grad()
def remap_head(model, old_d2t, new_d2t, target, ridge=0.1):
    """Move a trained drafter to another draft vocabulary (`ppow-train kd --init DIR --draft-vocab N`).

    A token in both keeps its trained head row. A new one starts from the target's output row mapped
    into the trained head's space by a linear map fitted (ridge least squares) on the rows of the tokens
    in both: trained rows are far from the target's (Gemma 3 270M's shipped drafter: cosine 0.24), so
    the target's rows as they are made new tokens win the argmax everywhere (held-out tau(k=4) 1.07
    against 1.67); the fitted map predicts held-out trained rows at cosine 0.94 (measured). With fewer
    shared rows than twice the hidden size the target's rows are only scaled to the trained rows' norm.
    Returns how many rows were kept."""
    new_vocab_d2t = new_d2t  # None: the full target vocabulary, as set_d2t takes it
    old_d2t = torch.arange(target["vocab_size"]) if old_d2t is None else torch.as_tensor(old_d2t, dtype=torch.long)
    new_d2t = torch.arange(target["vocab_size"]) if new_d2t is None else torch.as_tensor(new_d2t, dtype=torch.long)
    old_rows = model.lm_head.weight.detach().clone()
    pos = torch.full((target["vocab_size"],), -1, dtype=torch.long)
    pos[old_d2t] = torch.arange(len(old_d2t))
    src = pos[new_d2t]
    kept = src >= 0
    out = target["output"][new_d2t].to(torch.float32).cpu().clone()
    if kept.any():
        x = target["output"][new_d2t[kept]].to(torch.float32)
        y = old_rows[src[kept]].to(torch.float32).cpu()
        if len(x) >= 2 * x.shape[1]:
            xtx = x.T @ x  # ridge relative to the rows' scale (mean diagonal of x'x)
            a = torch.linalg.solve(xtx + ridge * xtx.diagonal().mean() * torch.eye(x.shape[1]), x.T @ y)
            out = out @ a
        else:
            out *= y.norm(dim=1).mean() / x.norm(dim=1).mean().clamp_min(1e-12)
        out[kept] = y
    model.lm_head = nn.Linear(old_rows.shape[1], len(new_d2t), bias=False).to(old_rows.device, old_rows.dtype)
    model.lm_head.weight.copy_(out.to(old_rows.dtype))
    model.cfg["draft_vocab_size"] = len(new_d2t)
    model.set_d2t(new_vocab_d2t)
    return int(kept.sum())
