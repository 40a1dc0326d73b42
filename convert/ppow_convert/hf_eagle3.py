"""The Hugging Face EAGLE-3 checkpoint layout (EAGLE authors, SpecForge, vLLM speculators) <-> ppow.

One layout, read by vLLM, SGLang and llama.cpp's convert_hf_to_gguf.py:
- config.json: a Llama config of ONE decoder layer (architectures LlamaForCausalLMEagle3,
  Eagle3LlamaForCausalLM or Eagle3DraftModel; speculators' Eagle3Speculator nests it under
  transformer_layer_config) plus draft_vocab_size, target_hidden_size, norm_before_residual,
  norm_before_fc and the three auxiliary layer ids (eagle_aux_hidden_state_layer_ids: top level for
  vLLM, llama.cpp and speculators, inside eagle_config for SpecForge/SGLang).
- weights (safetensors): fc, one layer under midlayer.* (speculators: layers.0.*), norm, lm_head,
  d2t, t2d; optionally input_norm (norm_before_fc) and embed_tokens.

Conventions that differ from ppow's (each one converted here, both ways):
- d2t holds OFFSETS: target id = i + d2t[i] (vLLM, speculators, and llama.cpp's converter adds
  arange); ppow's checkpoints and GGUFs hold absolute ids. t2d is a bool mask over the target vocab.
- q/k rows are for rotate-half RoPE (HF); ppow trains and llama.cpp runs adjacent pairs: the same
  row permutation llama.cpp's converter applies (hf_llama.permute) and its inverse.
- layer ids: id k = hidden_states[k] = the INPUT of target layer k (vLLM and llama.cpp read them so;
  ppow's target_layers mean the same). SGLang long read explicit ids as layer OUTPUTS (k -> k+1) and
  since 2026 does so only when the first id is 1: `layer_ids="outputs"` imports such a checkpoint.
  Without ids, every reader takes [2, N/2, N-3] (N target layers), as here.
- embed_tokens: ppow's drafters borrow the target's token embeddings (unscaled rows), as vLLM and
  SGLang do when a checkpoint has none; so exports leave it out unless asked, and an import accepts
  one only when it is the target's own (same row directions: the drafter RMS-normalises the row).
"""
import json
import os
import shutil

import numpy as np

from .eagle3 import check_d2t, check_fc_type, write_eagle3
from .errors import ConvertError
from .feature_drafter import FeatureDrafter, load as load_drafter
from .gguf_io import OUTTYPES
from .hf_llama import need_float, need_int, permute
from .safetensors_io import read_dir, write_file
from .target_info import TargetInfo

ARCHITECTURES = ("LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM", "Eagle3DraftModel", "Eagle3Speculator")
EXPORT_ARCHITECTURE = "LlamaForCausalLMEagle3"
EAGLE_KEYS = ("draft_vocab_size", "target_hidden_size", "norm_before_residual", "norm_before_fc",
              "eagle_aux_hidden_state_layer_ids", "eagle_config")
DTYPES = {"f32": ("F32", "float32"), "bf16": ("BF16", "bfloat16"), "f16": ("F16", "float16")}
EMBED_MIN_COSINE = 0.98  # mean row cosine to the target's rows; Q4/Q8 quantization keeps it above 0.99
EMBED_SAMPLE = 4096  # rows compared


def unpermute(w, n_head):
    """Inverse of hf_llama.permute: llama.cpp's adjacent RoPE pairs -> HF rotate-half rows."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ------------------------------------------------------------------------------------------- import

def _read_config(model_dir):
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise ConvertError(f"missing config.json in {model_dir}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except ValueError as e:
        raise ConvertError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConvertError(f"{path} is not a JSON object")
    archs = raw.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else None
    if arch not in ARCHITECTURES:
        raise ConvertError(f"unsupported architecture {arch!r} in {path}: not an EAGLE-3 checkpoint "
                           f"(supported: {', '.join(ARCHITECTURES)})")
    cfg = dict(raw)
    layer = raw.get("transformer_layer_config")  # speculators: the layer's Llama config nested
    if layer is not None:
        if not isinstance(layer, dict):
            raise ConvertError(f"{path}: transformer_layer_config must be an object")
        if layer.get("model_type", "llama") != "llama":
            raise ConvertError(f"{path}: a {layer.get('model_type')!r} draft layer; llama.cpp's eagle3 graph "
                               "(and ppow's drafter) is a Llama layer")
        cfg = {**raw, **layer, **{k: raw[k] for k in EAGLE_KEYS if k in raw}}
    return path, cfg


def _aux_layers(cfg, path, target, layer_ids):
    ids = cfg.get("eagle_aux_hidden_state_layer_ids")
    eagle = cfg.get("eagle_config")
    if not ids and isinstance(eagle, dict):
        ids = eagle.get("eagle_aux_hidden_state_layer_ids")
    if not ids:
        if target.n_layer is None:
            raise ConvertError(f"{path} names no auxiliary layers and {target.where} no layer count")
        n = target.n_layer
        ids = [2, n // 2, n - 3]  # what vLLM, SGLang and llama.cpp take without ids
    else:
        if not isinstance(ids, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in ids):
            raise ConvertError(f"{path}: eagle_aux_hidden_state_layer_ids must be a list of layer numbers, got {ids!r}")
        if layer_ids == "outputs":
            ids = [k + 1 for k in ids]
    if len(ids) != 3:
        raise ConvertError(f"{path}: llama.cpp's eagle3 reads exactly 3 target layers, the checkpoint names {ids}")
    if target.n_layer is not None and not all(0 <= k < target.n_layer for k in ids):
        raise ConvertError(f"{path}: auxiliary layers {ids} (as hidden_states indices) are outside the target's "
                           f"0..{target.n_layer - 1} ({target.where} has {target.n_layer} layers)")
    return ids


def read_config(model_dir, target, layer_ids="inputs"):
    """config.json -> ppow's feature drafter config, checked against the target (a TargetInfo)."""
    if layer_ids not in ("inputs", "outputs"):
        raise ConvertError(f"layer ids are 'inputs' or 'outputs', not {layer_ids!r}")
    path, c = _read_config(model_dir)
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size", "num_hidden_layers"):
        if key not in c:
            raise ConvertError(f"{path} is missing {key!r}")
    c.setdefault("num_key_value_heads", c["num_attention_heads"])
    c.setdefault("draft_vocab_size", c["vocab_size"])
    c.setdefault("target_hidden_size", c["hidden_size"])
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
                "draft_vocab_size", "target_hidden_size"):
        need_int(c, key, path=path)
    if c["num_hidden_layers"] != 1:
        raise ConvertError(f"{path}: {c['num_hidden_layers']} decoder layers; llama.cpp's eagle3 graph has exactly one")
    if c["num_attention_heads"] % c["num_key_value_heads"]:
        raise ConvertError(f"{path}: num_attention_heads is not a multiple of num_key_value_heads")
    if c.get("hidden_act", "silu") != "silu":
        raise ConvertError(f"{path}: hidden_act {c['hidden_act']!r}; the eagle3 layer uses silu")
    if c.get("attention_bias") or c.get("mlp_bias"):
        raise ConvertError(f"{path}: attention or MLP biases, which the eagle3 graph does not have")
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}  # transformers >= 5 / < 5
    if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConvertError(f"{path}: RoPE scaling {rope!r}; ppow's feature drafters have plain RoPE")
    c["rope_theta"] = rope.get("rope_theta", c.get("rope_theta", 10000.0))
    for key in ("norm_before_residual", "norm_before_fc"):
        if not isinstance(c.get(key, False), bool):
            raise ConvertError(f"{path}: {key} must be true or false, got {c[key]!r}")
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    cfg = dict(hidden_size=c["hidden_size"], target_hidden_size=c["target_hidden_size"],
               target_vocab_size=c["vocab_size"], draft_vocab_size=c["draft_vocab_size"],
               intermediate_size=c["intermediate_size"], num_hidden_layers=1,
               num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
               head_dim=head_dim, rms_norm_eps=c.get("rms_norm_eps", 1e-6), rope_theta=c["rope_theta"],
               max_position_embeddings=c.get("max_position_embeddings", 2048),
               norm_before_residual=c.get("norm_before_residual", False), norm_before_fc=c.get("norm_before_fc", False))
    need_int(cfg, "head_dim", path=path)
    need_int(cfg, "max_position_embeddings", path=path)
    need_float(cfg, "rms_norm_eps", path=path, hi=1.0)
    need_float(cfg, "rope_theta", path=path)
    if head_dim % 2:
        raise ConvertError(f"{path}: head_dim {head_dim} must be even (RoPE rotates pairs)")
    if cfg["target_vocab_size"] != target.n_vocab:
        raise ConvertError(f"the checkpoint was made for a target vocabulary of {cfg['target_vocab_size']} tokens "
                           f"(config vocab_size), {target.where} has {target.n_vocab}")
    if cfg["target_hidden_size"] != target.n_embd:
        raise ConvertError(f"the checkpoint reads target features of width {cfg['target_hidden_size']} "
                           f"(target_hidden_size), {target.where} has hidden size {target.n_embd}")
    if cfg["hidden_size"] != target.n_embd:
        raise ConvertError(f"the checkpoint's hidden size {cfg['hidden_size']} differs from the target's {target.n_embd}: "
                           "ppow's feature drafters read the target's token embedding rows")
    cfg["target_layers"] = _aux_layers(c, path, target, layer_ids)
    return cfg


def _check_embed(embed, target, where):
    """Accept a checkpoint's embed_tokens only when it is the target's (row directions agree)."""
    if embed.shape != (target.n_vocab, target.n_embd):
        raise ConvertError(f"{where}: embed_tokens.weight has shape {list(embed.shape)}, expected "
                           f"[{target.n_vocab}, {target.n_embd}]")
    if target.embed_rows is None:
        raise ConvertError(f"{where} has its own embed_tokens and {target.where} no token_embd to compare it with")
    ids = np.random.default_rng(0).choice(target.n_vocab, size=min(EMBED_SAMPLE, target.n_vocab), replace=False)
    ids.sort()
    a, b = np.asarray(embed[ids], dtype=np.float64), np.asarray(target.embed_rows(ids), dtype=np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    if cos.mean() < EMBED_MIN_COSINE:
        raise ConvertError(f"{where}: embed_tokens.weight is not the target's token embedding (mean row cosine "
                           f"{cos.mean():.3f} < {EMBED_MIN_COSINE}); ppow's feature drafters borrow the target's rows")


def read_tensors(model_dir, cfg, target):
    """(tensors in ppow's names and q/k layout, absolute d2t or None)."""
    raw = read_dir(model_dir)
    tensors, d2t, t2d = {}, None, None
    for name, t in raw.items():
        key = name[len("model."):] if name.startswith("model.") else name
        if key.startswith("layers.0."):  # speculators
            key = "midlayer." + key[len("layers.0."):]
        if key == "d2t":
            d2t = t
        elif key == "t2d":
            t2d = t
        elif key == "embed_tokens.weight":
            _check_embed(t, target, model_dir)
        elif key.startswith("verifier_") or key.endswith("rotary_emb.inv_freq"):
            continue  # training-only copies of the target's head; RoPE tables
        elif key.startswith("layers."):
            raise ConvertError(f"{model_dir}: tensor {name!r} of a second decoder layer (the eagle3 graph has one)")
        elif key in tensors:
            raise ConvertError(f"{model_dir}: tensor {key!r} appears twice")
        else:
            if t.dtype.kind != "f":
                raise ConvertError(f"{model_dir}: tensor {name!r} is {t.dtype}, expected floating point")
            tensors[key] = np.asarray(t, dtype=np.float32)
    for key, n in (("midlayer.self_attn.q_proj.weight", cfg["num_attention_heads"]),
                   ("midlayer.self_attn.k_proj.weight", cfg["num_key_value_heads"])):
        if key in tensors and tensors[key].ndim == 2 and tensors[key].shape[0] == n * cfg["head_dim"]:
            tensors[key] = permute(tensors[key], n)  # a wrong shape is named by eagle3_tensors
    return tensors, _d2t(d2t, t2d, cfg, model_dir)


def _d2t(d2t, t2d, cfg, where):
    n_draft, n_target = cfg["draft_vocab_size"], cfg["target_vocab_size"]
    if d2t is None:
        if n_draft != n_target:
            raise ConvertError(f"{where}: missing tensor 'd2t' (draft_vocab_size {n_draft} < vocab_size {n_target})")
        return None
    if d2t.ndim != 1 or d2t.dtype.kind not in "iu":
        raise ConvertError(f"{where}: d2t must be a 1-D integer tensor, is {d2t.dtype} {list(d2t.shape)}")
    offsets = np.asarray(d2t, dtype=np.int64)
    absolute = offsets + np.arange(len(offsets), dtype=np.int64)
    try:
        absolute = check_d2t(absolute, n_draft, n_target, f"{where} (d2t offsets: target id = i + d2t[i])")
    except ConvertError as e:
        if len(offsets) == n_draft and np.all(np.diff(offsets) > 0) and offsets.min() >= 0 and offsets.max() < n_target:
            raise ConvertError(f"{e}; its d2t looks like absolute target ids, which is not the HF convention") from None
        raise
    if t2d is not None:
        mask = np.zeros(n_target, dtype=bool)
        mask[absolute] = True
        if t2d.shape != (n_target,) or not np.array_equal(np.asarray(t2d).astype(bool), mask):
            raise ConvertError(f"{where}: t2d disagrees with d2t (t2d must mark exactly the target ids i + d2t[i])")
    if n_draft == n_target and np.array_equal(absolute, np.arange(n_target)):
        return None  # the identity: a full-vocabulary head
    return absolute


def read_hf_eagle3(model_dir, target, layer_ids="inputs"):
    """An HF EAGLE-3 checkpoint dir -> FeatureDrafter, after checking it fits `target` (TargetInfo)."""
    if not os.path.isdir(model_dir):
        raise ConvertError(f"{model_dir}: not a directory")
    cfg = read_config(model_dir, target, layer_ids)
    tensors, d2t = read_tensors(model_dir, cfg, target)
    d = FeatureDrafter(os.path.basename(os.path.normpath(model_dir)), cfg, tensors, d2t)
    d.checked_tensors(model_dir)  # names, shapes, NaN/inf
    return d


def is_hf_eagle3(model_dir):
    """True when model_dir's config.json names an EAGLE-3 architecture."""
    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            archs = json.load(f).get("architectures")
        return isinstance(archs, list) and bool(archs) and archs[0] in ARCHITECTURES
    except (OSError, ValueError, AttributeError):
        return False


def import_hf_eagle3(model_dir, target_gguf, out_path, outtype="f16", fc_type="f32", layer_ids="inputs"):
    """HF EAGLE-3 checkpoint dir -> ppow's eagle3 GGUF for target_gguf (what `ppow-convert drafter` writes)."""
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown outtype {outtype!r} (choose from {', '.join(OUTTYPES)})")
    check_fc_type(fc_type)
    d = read_hf_eagle3(model_dir, TargetInfo.from_gguf(target_gguf), layer_ids)
    return write_eagle3(out_path, d.name, d.cfg, d.checked_tensors(model_dir), d.d2t, outtype, fc_type)


# ------------------------------------------------------------------------------------------- export

def hf_config(d, dtype):
    c = d.cfg
    layers = [int(k) for k in c["target_layers"]]
    return {
        "architectures": [EXPORT_ARCHITECTURE], "model_type": "llama",
        "hidden_size": c["hidden_size"], "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": 1, "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"], "head_dim": c["head_dim"], "hidden_act": "silu",
        "rms_norm_eps": c["rms_norm_eps"], "rope_theta": c["rope_theta"], "rope_scaling": None,
        "max_position_embeddings": c["max_position_embeddings"], "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": False, "vocab_size": c["target_vocab_size"], "draft_vocab_size": c["draft_vocab_size"],
        "target_hidden_size": c["target_hidden_size"], "norm_before_residual": bool(c.get("norm_before_residual")),
        "norm_before_fc": bool(c.get("norm_before_fc")),
        # hidden_states indices (input of target layer k): vLLM and llama.cpp read the top-level key,
        # SGLang the eagle_config one
        "eagle_aux_hidden_state_layer_ids": layers,
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": layers, "use_aux_hidden_state": True},
        "torch_dtype": DTYPES[dtype][1],
    }


def hf_tensors(d, dtype, embed=None):
    """name -> (safetensors dtype, array) in the HF layout."""
    c, st = d.cfg, DTYPES[dtype][0]
    out = {}
    for name, t in d.tensors.items():
        if name == "midlayer.self_attn.q_proj.weight":
            t = unpermute(t, c["num_attention_heads"])
        elif name == "midlayer.self_attn.k_proj.weight":
            t = unpermute(t, c["num_key_value_heads"])
        out[name] = (st, t)
    if d.d2t is not None:
        out["d2t"] = ("I64", d.d2t - np.arange(len(d.d2t), dtype=np.int64))  # offsets
        t2d = np.zeros(c["target_vocab_size"], dtype=bool)
        t2d[d.d2t] = True
        out["t2d"] = ("BOOL", t2d)
    if embed is not None:
        out["embed_tokens.weight"] = (st, embed)
    return out


def write_hf_eagle3(d, out_dir, dtype="f32", embed=None):
    """Write the HF EAGLE-3 dir (config.json, model.safetensors) atomically: a temp dir renamed into place."""
    if dtype not in DTYPES:
        raise ConvertError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    if not os.path.isdir(parent):
        raise ConvertError(f"output directory {parent} does not exist")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ConvertError(f"{out_dir} exists and is not an empty directory: choose a new one")
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config(d, dtype), f, indent=2)
            f.write("\n")
        write_file(os.path.join(tmp, "model.safetensors"), hf_tensors(d, dtype, embed),
                   metadata={"format": "pt", "ppow_source": d.name})
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def export_hf_eagle3(src, out_dir, dtype="f32", target_gguf=None, embed_tokens=False):
    """A trainer checkpoint dir or eagle3 GGUF -> HF EAGLE-3 dir. target_gguf: checked against the drafter;
    embed_tokens: also write the target's token embeddings (dequantized) as embed_tokens.weight."""
    d = load_drafter(src)
    embed = None
    if target_gguf is not None:
        target = TargetInfo.from_gguf(target_gguf)
        c = d.cfg
        if (c["target_vocab_size"], c["target_hidden_size"]) != (target.n_vocab, target.n_embd):
            raise ConvertError(f"{src} was made for a target of {c['target_vocab_size']} tokens and hidden size "
                               f"{c['target_hidden_size']}, {target_gguf} has {target.n_vocab} and {target.n_embd}")
        if target.n_layer is not None and not all(0 <= k < target.n_layer for k in c["target_layers"]):
            raise ConvertError(f"{src} reads target layers {c['target_layers']}, {target_gguf} has {target.n_layer}")
        if embed_tokens:
            if target.embed_rows is None:
                raise ConvertError(f"{target_gguf} has no token_embd.weight to export")
            embed = target.embed_rows(np.arange(target.n_vocab))
    elif embed_tokens:
        raise ConvertError("embed_tokens come from the target: pass --target T.gguf")
    return write_hf_eagle3(d, out_dir, dtype, embed)
