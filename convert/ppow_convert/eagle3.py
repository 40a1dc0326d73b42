"""Feature drafter checkpoint (ppow-train --drafter-kind feature) -> llama.cpp `eagle3` GGUF.

What llama.cpp 0.3.36's loader reads (src/models/eagle3.cpp, src/llama-model.cpp):
- keys: general.architecture = eagle3; eagle3.{context_length, embedding_length, block_count = 1,
  feed_forward_length, attention.head_count, attention.head_count_kv, attention.key_length =
  attention.value_length, attention.layer_norm_rms_epsilon, rope.dimension_count, rope.freq_base,
  target_layers (INT32 array of exactly 3), target_hidden_size, vocab_size}; norm_before_residual and
  norm_before_fc (BOOL) when set; tokenizer.ggml.model = "none" (llama.cpp then makes vocab_size
  placeholder tokens: vocab_size = the target's, which sets the logits row width).
- tensors: fc.weight [3·Ht -> H], enc.output_norm.weight [3·Ht] (norm_before_fc only), output_norm,
  output [H -> draft vocab], d2t (I64 absolute target ids, as llama.cpp's own converter writes them),
  blk.0.{attn_norm, attn_norm_2, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up,
  ffn_down}. No token_embd: the drafter borrows the target's (the runtime passes the target context
  as ctx_other). A full-vocabulary drafter gets no d2t (its output rows are the target's ids).
Types: norms and d2t stay f32 in every out type, and fc.weight by default (Gemma's features reach 1e5
and an f16 fc.weight gave NaN: the CPU converts the activations to f16 for it; `fc_type="q8_0"`
quantizes both it and, at run time, the features to 8 bits per block of 32, which a target without
such outliers may afford); other matrices take the out type.
q/k need no permutation: the trainer already uses llama.cpp's adjacent-pair RoPE.
"""
import json
import os

import numpy as np
import gguf
from ppow.gguf_keys import TARGET_N_VOCAB as KEY_TARGET_N_VOCAB

from .errors import ConvertError
from .gguf_io import OUTTYPES, add_weight, open_gguf, write_gguf
from .hf_llama import need_float, need_int
from .safetensors_io import read_dir, read_file
from .tokenizer import token_count

MODEL_TYPE = "ppow_eagle3"
D2T_FILE = "draft_vocab.safetensors"
CONFIG_KEYS = ("hidden_size", "target_hidden_size", "target_layers", "target_vocab_size", "draft_vocab_size",
               "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
               "rope_theta", "max_position_embeddings")
LAYER = {"midlayer.input_layernorm": "attn_norm", "midlayer.hidden_norm": "attn_norm_2",
         "midlayer.self_attn.q_proj": "attn_q", "midlayer.self_attn.k_proj": "attn_k",
         "midlayer.self_attn.v_proj": "attn_v", "midlayer.self_attn.o_proj": "attn_output",
         "midlayer.post_attention_layernorm": "ffn_norm", "midlayer.mlp.gate_proj": "ffn_gate",
         "midlayer.mlp.up_proj": "ffn_up", "midlayer.mlp.down_proj": "ffn_down"}


def read_drafter_weights(ckpt_dir):
    """A trainer checkpoint's weights: not its draft vocabulary, nor a resumable checkpoint's
    (OUT/ckpt) optimizer state."""
    return read_dir(ckpt_dir, exclude=(D2T_FILE, "trainer_state.safetensors"))

def is_feature_drafter(ckpt_dir):
    try:
        with open(os.path.join(ckpt_dir, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        return isinstance(cfg, dict) and cfg.get("model_type") == MODEL_TYPE
    except (OSError, ValueError):
        return False  # the llama path reports the problem


def load_config(ckpt_dir):
    with open(os.path.join(ckpt_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    path = f"{ckpt_dir}/config.json"
    missing = [k for k in CONFIG_KEYS if cfg.get(k) is None]
    if missing:
        raise ConvertError(f"{path} is missing {missing}")
    for k in CONFIG_KEYS:
        if k in ("rms_norm_eps", "rope_theta"):
            need_float(cfg, k, path=path, hi=1.0 if k == "rms_norm_eps" else 3.4e38)
        elif k != "target_layers":
            need_int(cfg, k, path=path)
    layers = cfg["target_layers"]
    if not isinstance(layers, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in layers):
        raise ConvertError(f"{path}: target_layers must be a list of layer numbers, got {layers!r}")
    if cfg.get("rope_pairs", "adjacent") != "adjacent":
        raise ConvertError("only adjacent-pair RoPE q/k weights (ppow-train's) convert without permutation")
    if len(cfg["target_layers"]) != 3:
        raise ConvertError(f"llama.cpp's eagle3 needs exactly 3 target layers, config has {cfg['target_layers']}")
    if cfg["hidden_size"] != cfg["target_hidden_size"]:
        raise ConvertError(f"hidden_size {cfg['hidden_size']} != target_hidden_size {cfg['target_hidden_size']}: "
                           "llama.cpp feeds the drafter the target's token embedding rows")
    if cfg.get("num_hidden_layers", 1) != 1:
        raise ConvertError("llama.cpp's eagle3 graph has exactly one decoder layer")
    return cfg


def target_params(reader, path):
    """(n_vocab, n_embd, n_layer) of the target GGUF."""
    arch = reader.fields.get("general.architecture")
    arch = arch.contents() if arch is not None else None
    n_embd = reader.fields.get(f"{arch}.embedding_length")
    if n_embd is None:
        raise ConvertError(f"{path} has no {arch}.embedding_length: not a target model GGUF")
    n_layer = reader.fields.get(f"{arch}.block_count")
    return token_count(reader, path), int(n_embd.contents()), int(n_layer.contents()) if n_layer is not None else None


def check_d2t(d2t, n_draft, n_target, where):
    """d2t (absolute target ids, one per draft row) as int64, or a ConvertError naming `where`."""
    if d2t.ndim != 1 or d2t.dtype.kind not in "iu":
        raise ConvertError(f"{where} must hold a 1-D integer tensor 'd2t'")
    d2t = np.asarray(d2t, dtype=np.int64)
    if len(d2t) != n_draft:
        raise ConvertError(f"{where} maps {len(d2t)} draft tokens, the drafter's output has {n_draft} rows")
    if len(d2t) and (d2t.min() < 0 or d2t.max() >= n_target):
        raise ConvertError(f"{where}: d2t has ids outside the target vocabulary [0, {n_target})")
    if len(np.unique(d2t)) != len(d2t):
        raise ConvertError(f"{where}: d2t maps two draft entries to the same target token")
    return d2t


def load_d2t(ckpt_dir, n_draft, n_target):
    path = os.path.join(ckpt_dir, D2T_FILE)
    if not os.path.isfile(path):
        if n_draft != n_target:
            raise ConvertError(f"draft vocabulary of {n_draft} rows but no {D2T_FILE} mapping them to target ids")
        return None
    d2t = read_file(path).get("d2t")
    if d2t is None:
        raise ConvertError(f"{path} must hold a 1-D integer tensor 'd2t'")
    return check_d2t(d2t, n_draft, n_target, path)


def eagle3_tensors(tensors, cfg, ckpt_dir):
    """(gguf name, array, keep_f32) in file order; checks names and shapes llama.cpp will enforce."""
    H, Ht, hd = cfg["hidden_size"], cfg["target_hidden_size"], cfg["head_dim"]
    nh, nkv, ff = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
    Vd = cfg["draft_vocab_size"]
    spec = [("fc.weight", "fc.weight", (H, 3 * Ht), True)]
    if cfg.get("norm_before_fc"):
        spec.append(("input_norm.weight", "enc.output_norm.weight", (3 * Ht,), True))
    spec += [("norm.weight", "output_norm.weight", (H,), True), ("lm_head.weight", "output.weight", (Vd, H), False)]
    shapes = {"attn_norm": (H,), "attn_norm_2": (H,), "attn_q": (nh * hd, 2 * H), "attn_k": (nkv * hd, 2 * H),
              "attn_v": (nkv * hd, 2 * H), "attn_output": (H, nh * hd), "ffn_norm": (H,), "ffn_gate": (ff, H),
              "ffn_up": (ff, H), "ffn_down": (H, ff)}
    spec += [(f"{k}.weight", f"blk.0.{v}.weight", shapes[v], len(shapes[v]) == 1) for k, v in LAYER.items()]
    known = {s[0] for s in spec}
    for name in tensors:
        if name not in known:
            raise ConvertError(f"unexpected tensor {name!r} in {ckpt_dir} (not a feature drafter of this config?)")
    out = []
    for src, dst, shape, keep_f32 in spec:
        if src not in tensors:
            raise ConvertError(f"missing tensor {src!r} in {ckpt_dir}")
        t = tensors[src]
        if tuple(t.shape) != shape:
            raise ConvertError(f"tensor {src!r} has shape {list(t.shape)}, expected {list(shape)} from config.json")
        if not np.all(np.isfinite(t)):
            raise ConvertError(f"tensor {src!r} has NaN or inf values")
        out.append((dst, t, keep_f32))
    return out


def check_fc_type(fc_type):
    if fc_type not in ("f32", "q8_0"):
        raise ConvertError(f"fc type must be f32 or q8_0, not {fc_type!r} (f16 overflows on large features)")


def check_target(cfg, target_gguf):
    """The target's vocabulary size, after checking that the drafter's config fits target_gguf."""
    n_target, n_embd, n_layer = target_params(open_gguf(target_gguf), target_gguf)
    if cfg["target_vocab_size"] != n_target:
        raise ConvertError(f"the drafter was trained for a target with {cfg['target_vocab_size']} tokens, "
                           f"{target_gguf} has {n_target}")
    if cfg["target_hidden_size"] != n_embd:
        raise ConvertError(f"the drafter reads target features of width {cfg['target_hidden_size']}, "
                           f"{target_gguf} has hidden size {n_embd}")
    if n_layer is not None and not all(0 <= k < n_layer for k in cfg["target_layers"]):
        raise ConvertError(f"target_layers {cfg['target_layers']} outside the target's hidden_states[0..{n_layer - 1}]")
    return n_target


def write_eagle3(out_path, name, cfg, tensors, d2t, outtype="f16", fc_type="f32"):
    """Write the eagle3 GGUF: cfg (checked by load_config's rules), tensors from eagle3_tensors, d2t
    absolute target ids (None: a full-vocabulary head)."""
    n_target = cfg["target_vocab_size"]

    def fill(w):
        w.add_name(name)
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"])
        w.add_block_count(1)
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(cfg["num_attention_heads"])
        w.add_head_count_kv(cfg["num_key_value_heads"])
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
        w.add_rope_dimension_count(cfg["head_dim"])
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_rope_freq_base(cfg["rope_theta"])
        w.add_array(f"{w.arch}.target_layers", [int(k) for k in cfg["target_layers"]])  # ints: INT32
        w.add_uint32(f"{w.arch}.target_hidden_size", cfg["target_hidden_size"])
        if cfg.get("norm_before_residual"):
            w.add_bool(f"{w.arch}.norm_before_residual", True)
        if cfg.get("norm_before_fc"):
            w.add_bool(f"{w.arch}.norm_before_fc", True)
        w.add_vocab_size(n_target)
        w.add_tokenizer_model("none")
        w.add_uint32(KEY_TARGET_N_VOCAB, n_target)
        w.add_file_type(OUTTYPES[outtype][0])
        for gg_name, t, keep_f32 in tensors:
            add_weight(w, gg_name, t, fc_type if gg_name == "fc.weight" else "f32" if keep_f32 else outtype)
        if d2t is not None:
            w.add_tensor("d2t", d2t, raw_dtype=gguf.GGMLQuantizationType.I64)

    return write_gguf(out_path, "eagle3", fill)


def convert_eagle3(ckpt_dir, target_gguf, out_path, outtype="f16", fc_type="f32"):
    """Write the eagle3 GGUF of a feature drafter for target_gguf (its vocabulary and hidden size)."""
    check_fc_type(fc_type)
    cfg = load_config(ckpt_dir)
    n_target = check_target(cfg, target_gguf)
    d2t = load_d2t(ckpt_dir, cfg["draft_vocab_size"], n_target)
    tensors = eagle3_tensors(read_drafter_weights(ckpt_dir), cfg, ckpt_dir)
    return write_eagle3(out_path, os.path.basename(os.path.normpath(ckpt_dir)), cfg, tensors, d2t, outtype, fc_type)
