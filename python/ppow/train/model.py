"""The drafter: a small Llama decoder, written out so that its state dict and config.json are exactly
those of transformers' LlamaForCausalLM (so `ppow-convert drafter` and llama.cpp run it as-is).

Own code rather than transformers' module because rollouts and evaluation call tiny models thousands of
times on CPU, where transformers' per-call overhead dominates; tests check the logits against
transformers' LlamaForCausalLM on the same weights.
"""

import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

# fields copied into config.json; everything a LlamaConfig needs to rebuild the same network
DEFAULT_CONFIG = dict(
    vocab_size=32000,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    head_dim=None,  # None: hidden_size // num_attention_heads
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position_embeddings=8192,
    tie_word_embeddings=False,
    initializer_range=0.02,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)


def make_config(**kw):
    cfg = dict(DEFAULT_CONFIG)
    unknown = set(kw) - set(cfg)
    if unknown:
        raise ValueError(f"unknown drafter config fields: {sorted(unknown)}")
    cfg.update(kw)
    if cfg["head_dim"] is None:
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    return cfg


def hf_config_dict(cfg):
    """config.json contents: a LlamaConfig that transformers and the converter both read."""
    d = dict(cfg)
    d.update(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_act="silu",
        attention_bias=False,
        attention_dropout=0.0,
        mlp_bias=False,
        rope_scaling=None,
        pretraining_tp=1,
        use_cache=True,
        torch_dtype="float32",
    )
    return d


def save_config(cfg, path):
    with open(path, "w") as f:
        json.dump(hf_config_dict(cfg), f, indent=2)


def load_config(path):
    with open(path) as f:
        d = json.load(f)
    if d.get("model_type", "llama") != "llama":
        raise ValueError(f"{path}: drafter must be a llama config, got model_type={d.get('model_type')}")
    if d.get("rope_scaling"):
        raise ValueError(f"{path}: rope_scaling is not supported by this trainer")
    return make_config(**{k: d[k] for k in DEFAULT_CONFIG if k in d})


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # same order of operations as transformers' LlamaRMSNorm (normalise in fp32, then scale)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(positions, head_dim, theta, dtype):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    f = positions.float()[:, None] * inv[None, :]
    emb = torch.cat([f, f], dim=-1)  # HF "rotate_half" layout
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, hd = cfg["hidden_size"], cfg["head_dim"]
        self.nh, self.nkv, self.hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], hd
        self.q_proj = nn.Linear(h, self.nh * hd, bias=False)
        self.k_proj = nn.Linear(h, self.nkv * hd, bias=False)
        self.v_proj = nn.Linear(h, self.nkv * hd, bias=False)
        self.o_proj = nn.Linear(self.nh * hd, h, bias=False)

    def forward(self, x, cos, sin, mask, kv):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if kv is not None:
            k = torch.cat([kv[0], k], dim=2)
            v = torch.cat([kv[1], v], dim=2)
        new_kv = (k, v)
        if self.nkv != self.nh:
            k = k.repeat_interleave(self.nh // self.nkv, dim=1)
            v = v.repeat_interleave(self.nh // self.nkv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.nh * self.hd)), new_kv


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, i = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, kv):
        a, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), new_kv


class Backbone(nn.Module):
    # named "model" inside Drafter so parameter names match LlamaForCausalLM ("model.layers.0....")
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class Drafter(nn.Module):
    kind = "standalone"

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        self.apply(self._init)
        if cfg["tie_word_embeddings"]:
            self.lm_head.weight = self.model.embed_tokens.weight

    def _init(self, m):
        std = self.cfg["initializer_range"]
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)

    def forward(self, ids, key_mask=None, cache=None, last_n=None):
        """ids [B,T] -> (logits [B,T,V] float32, new cache); with last_n only the last n positions' logits
        (the output layer dominates a small drafter's cost, so rollouts skip it on the context).

        key_mask [B, past+T] bool marks real (non-padding) keys; batches are left-padded so every row's
        newest token sits in the last column. RoPE only sees relative positions, so left padding does not
        change a row's logits. cache is a list of per-layer (k, v) from a previous call.
        """
        B, T = ids.shape
        past = 0 if cache is None else cache[0][0].shape[2]
        x = self.model.embed_tokens(ids)
        pos = torch.arange(past, past + T, device=ids.device)
        cos, sin = rope_cos_sin(pos, self.cfg["head_dim"], self.cfg["rope_theta"], x.dtype)
        # causal mask over (cached + new) keys, combined with the padding mask
        causal = torch.ones(T, past + T, dtype=torch.bool, device=ids.device).tril(diagonal=past)
        mask = causal[None, None]
        if key_mask is not None:
            mask = mask & key_mask[:, None, None, :]
            # a fully padded query row would give NaN softmax; let padded queries see themselves
            diag = torch.zeros(T, past + T, dtype=torch.bool, device=ids.device)
            r = torch.arange(T, device=ids.device)
            diag[r, past + r] = True
            mask = mask | diag[None, None]
        new_cache = []
        for i, layer in enumerate(self.model.layers):
            x, kv = layer(x, cos, sin, mask, None if cache is None else cache[i])
            new_cache.append(kv)
        if last_n is not None:
            x = x[:, -last_n:]
        x = self.model.norm(x)
        return self.lm_head(x).float(), new_cache


def num_params(model):
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def init_embeddings_from_matrix(model, target_embed, d2t=None, seed=0):
    """Initialise the drafter's input (and untied output) embeddings from the target's embedding matrix.

    target_embed [Vt, Dt] (float). Rows are picked by d2t (reduced draft vocabulary) and projected to the
    drafter width with PCA (the top principal directions keep most of the geometry of the target's
    token space in few dimensions), then rescaled to the drafter's init std so training dynamics match a
    random init. If the drafter is wider than Dt the extra columns are small random values.
    """
    E = target_embed.float()
    if d2t is not None:
        E = E[d2t]
    V, D = model.cfg["vocab_size"], model.cfg["hidden_size"]
    if E.shape[0] != V:
        raise ValueError(f"target embedding rows {E.shape[0]} != drafter vocab {V}")
    E = E - E.mean(0, keepdim=True)
    cov = E.T @ E / max(1, V - 1)
    evals, evecs = torch.linalg.eigh(cov.double())  # ascending
    r = min(D, E.shape[1])
    proj = evecs[:, -r:].flip(-1).float()  # top-r directions, largest first
    low = E @ proj
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(V, D, generator=g) * 1e-3
    out[:, :r] = low
    out = out / out.std().clamp_min(1e-12) * model.cfg["initializer_range"]
    model.model.embed_tokens.weight.copy_(out)
    if not model.cfg["tie_word_embeddings"]:
        model.lm_head.weight.copy_(out)
    frac = (evals[-r:].sum() / evals.sum().clamp_min(1e-30)).item()
    return frac  # share of the target embedding variance kept


def read_gguf_token_embd(path):
    """token_embd.weight of a GGUF file, dequantised to float32 [n_vocab, n_embd]."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(path)
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
            arr = np.asarray(arr, dtype=np.float32)
            n_embd, n_vocab = int(t.shape[0]), int(t.shape[1])  # GGUF lists ne0 (row length) first
            return torch.from_numpy(arr.reshape(n_vocab, n_embd).copy())
    raise ValueError(f"{path}: no token_embd.weight tensor")


def read_target_embeddings(target_path):
    """The target's input embedding matrix, from a GGUF file or an HF model directory."""
    if os.path.isfile(target_path) and target_path.endswith(".gguf"):
        return read_gguf_token_embd(target_path)
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(target_path, dtype=torch.float32)
    return m.get_input_embeddings().weight.detach().float().clone()


# ---------------------------------------------------------------------------------------------------
# batched drafting helpers (left-padded batches, so every row's newest token is in the last column)


def left_pad(seqs, pad_id=0):
    """list of 1-D LongTensors -> ids [B,T], mask [B,T] bool (True = real token)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, T - len(s):] = torch.as_tensor(s, dtype=torch.long)
            mask[i, T - len(s):] = True
    return ids, mask


def forward_windows(model, contexts, cont, pad_id=0):
    """Teacher-forced logits over a window. contexts: list of B draft-id tensors; cont [B,k].

    Returns logits [B,k,V]: logits[:, j] predicts cont[:, j] from context + cont[:, :j].
    """
    ids, mask = left_pad(contexts, pad_id)
    dev = next(model.parameters()).device
    k = cont.shape[1]
    x = torch.cat([ids, cont[:, :k - 1].cpu()], 1).to(dev)
    m = torch.cat([mask, torch.ones(len(contexts), k - 1, dtype=torch.bool)], 1).to(dev)
    logits, _ = model(x, key_mask=m, last_n=k)
    return logits


def sample_loop(logits, step, k, greedy=True, temperature=1.0, generator=None, gather_ids=None):
    """The drafting loop both drafter kinds share: logits [B,V] of the first draft position;
    step(j, tokens [B]) feeds the j-th drafted token and returns the next position's logits [B,V].

    Returns tokens [B,k], logp [B,k] (log-prob of each drafted token under softmax(logits/temperature)),
    and q_at [B,k,K] = softmax(logits)[gather_ids[:, j]] when gather_ids [B,k,K] is given.
    """
    dev = logits.device
    toks, logps, qs = [], [], []
    for j in range(k):
        lp = torch.log_softmax(logits / temperature, -1)
        if greedy:
            t = logits.argmax(-1)
        else:
            t = torch.multinomial(lp.exp().cpu(), 1, generator=generator).squeeze(1).to(dev)
        toks.append(t)
        logps.append(lp.gather(1, t[:, None]).squeeze(1))
        if gather_ids is not None:
            qs.append(torch.softmax(logits, -1).gather(1, gather_ids[:, j].to(dev)))
        if j + 1 < k:
            logits = step(j + 1, t)
    out = (torch.stack(toks, 1).cpu(), torch.stack(logps, 1).cpu())
    if gather_ids is not None:
        out = out + (torch.stack(qs, 1).cpu(),)
    return out


@torch.no_grad()
def draft(model, contexts, k, greedy=True, temperature=1.0, generator=None, gather_ids=None, pad_id=0):
    """Draft k tokens autoregressively for each context (KV cache, one batched pass per token).

    Returns tokens [B,k], logp [B,k] (log-prob of each drafted token under softmax(logits/temperature)),
    and q_at [B,k,K] = softmax(logits)[gather_ids[:, j]] when gather_ids [B,k,K] is given.
    """
    ids, mask = left_pad(contexts, pad_id)
    dev = next(model.parameters()).device
    ids, mask = ids.to(dev), mask.to(dev)
    logits, cache = model(ids, key_mask=mask, last_n=1)
    st = dict(mask=mask, cache=cache)

    def step(j, t):
        st["mask"] = torch.cat([st["mask"], torch.ones(len(t), 1, dtype=torch.bool, device=dev)], 1)
        lg, st["cache"] = model(t[:, None], key_mask=st["mask"], cache=st["cache"])
        return lg[:, -1]

    return sample_loop(logits[:, -1], step, k, greedy, temperature, generator, gather_ids)
