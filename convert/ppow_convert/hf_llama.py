"""HF Llama-family checkpoint (config.json + safetensors) -> llama-architecture GGUF.

Follows llama.cpp's convert_hf_to_gguf.py for LlamaForCausalLM: same KV keys, same tensor
names, and q/k rows permuted from HF's rotate-half RoPE layout to llama.cpp's interleaved
pairs (LlamaModel.permute). Tied embeddings: no output.weight is written, and llama.cpp then
uses token_embd for the output projection.
"""
import json
import os

import gguf

from .errors import ConvertError
from .gguf_io import OUTTYPES, add_weight, write_gguf
from .safetensors_io import read_dir
from .tokenizer import add_hf_tokenizer

ARCHITECTURES = ("LlamaForCausalLM",)

GLOBAL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                  "lm_head.weight": "output.weight"}
LAYER_TENSORS = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}


MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS; also bounds the tensor names built per layer


def need_int(cfg, key, lo=1, path="config.json", hi=2**31 - 1):
    """cfg[key] as an int in [lo, hi] (config.json comes from the checkpoint's author)."""
    v = cfg[key]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ConvertError(f"{path}: {key} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def need_float(cfg, key, path="config.json", hi=3.4e38):
    """cfg[key] as a number in (0, hi]; GGUF stores these as float32 (max 3.4e38)."""
    v = cfg[key]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= hi:
        raise ConvertError(f"{path}: {key} must be a number in (0, {hi:g}], got {v!r}")
    return float(v)


def load_config(model_dir):
    """config.json with derived fields; refuses what the llama GGUF graph cannot express."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise ConvertError(f"missing config.json in {model_dir}")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except ValueError as e:
        raise ConvertError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConvertError(f"{path} is not a JSON object")
    archs = cfg.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else None
    if arch not in ARCHITECTURES:
        raise ConvertError(f"unsupported architecture {arch!r} in config.json (supported: {', '.join(ARCHITECTURES)})")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if key not in cfg:
            raise ConvertError(f"config.json is missing {key!r}")
    cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        need_int(cfg, key, path=path)
    need_int(cfg, "num_hidden_layers", path=path, hi=MAX_LAYERS)
    for key in ("rms_norm_eps", "max_position_embeddings"):
        if key in cfg:
            need_float(cfg, key, path=path, hi=1.0) if key == "rms_norm_eps" else need_int(cfg, key, path=path)
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        raise ConvertError(f"{path}: num_attention_heads {cfg['num_attention_heads']} is not a multiple of "
                           f"num_key_value_heads {cfg['num_key_value_heads']}")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConvertError(f"unsupported hidden_act {cfg['hidden_act']!r} (llama GGUF uses silu)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ConvertError("attention_bias / mlp_bias checkpoints are not supported")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}  # transformers >= 5 / < 5
    if not isinstance(rope, dict):
        raise ConvertError(f"{path}: rope_scaling must be an object, got {rope!r}")
    cfg["rope_theta"] = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    need_float(cfg, "rope_theta", path=path)
    cfg["rope_type"] = rope.get("rope_type", rope.get("type", "default"))
    if cfg["rope_type"] not in ("default", "linear"):
        raise ConvertError(f"unsupported rope scaling {cfg['rope_type']!r} (supported: default, linear)")
    if cfg["rope_type"] == "linear":
        if "factor" not in rope:
            raise ConvertError(f"{path}: linear rope scaling without a factor")
        need_float(rope, "factor", path=f"{path} rope scaling")
    cfg["head_dim"] = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    # llama.cpp's RoPE rotates pairs: the q/k permutation needs an even head size
    if need_int(cfg, "head_dim", path=path) % 2:
        raise ConvertError(f"{path}: head_dim {cfg['head_dim']} must be even")
    return cfg


def add_llama_params(writer, cfg, outtype, vocab_size=None):
    w = writer
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_rope_dimension_count(cfg["head_dim"])
    if cfg["head_dim"] != cfg["hidden_size"] // cfg["num_attention_heads"]:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    if cfg["rope_type"] == "linear":
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling")
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    w.add_vocab_size(vocab_size or cfg["vocab_size"])
    w.add_file_type(OUTTYPES[outtype][0])


def permute(w, n_head):
    """HF rotate-half q/k rows -> llama.cpp interleaved RoPE pairs (convert_hf_to_gguf LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_tensors(tensors, cfg, model_dir, output_rows=None):
    """Map HF tensors to GGUF (name, array); checks names and the shapes llama.cpp will enforce."""
    H, L, hd = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["head_dim"]
    n_head, n_kv, V = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    tied = cfg.get("tie_word_embeddings", False) and "lm_head.weight" not in tensors
    names = dict(GLOBAL_TENSORS)
    names.update({f"model.layers.{i}.{k}.weight": f"blk.{i}.{v}.weight" for i in range(L) for k, v in LAYER_TENSORS.items()})
    shapes = {"token_embd": (V, H), "output": (output_rows or V, H), "output_norm": (H,), "attn_norm": (H,),
              "ffn_norm": (H,), "attn_q": (n_head * hd, H), "attn_k": (n_kv * hd, H), "attn_v": (n_kv * hd, H),
              "attn_output": (H, n_head * hd), "ffn_gate": (cfg["intermediate_size"], H),
              "ffn_up": (cfg["intermediate_size"], H), "ffn_down": (H, cfg["intermediate_size"])}
    for name in tensors:
        if name not in names and not name.endswith("rotary_emb.inv_freq"):
            raise ConvertError(f"unexpected tensor {name!r} in {model_dir} (not a plain Llama checkpoint?)")
    out = []
    for hf_name, gg_name in names.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        if hf_name not in tensors:
            raise ConvertError(f"missing tensor {hf_name!r} in {model_dir}")
        t = tensors[hf_name]
        want = shapes[gg_name.split(".")[-2]]
        if tuple(t.shape) != want:
            raise ConvertError(f"tensor {hf_name!r} has shape {list(t.shape)}, expected {list(want)} from config.json")
        if gg_name.endswith("attn_q.weight"):
            t = permute(t, n_head)
        elif gg_name.endswith("attn_k.weight"):
            t = permute(t, n_kv)
        out.append((gg_name, t))
    return out


def convert_hf(model_dir, out_path, outtype="f16"):
    """Convert an HF Llama checkpoint directory (safetensors + tokenizer) to one GGUF file."""
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown outtype {outtype!r} (choose from {', '.join(OUTTYPES)})")
    if not os.path.isdir(model_dir):
        raise ConvertError(f"{model_dir}: not a directory")
    cfg = load_config(model_dir)
    tensors = llama_tensors(read_dir(model_dir), cfg, model_dir)

    def fill(w):
        w.add_name(os.path.basename(os.path.normpath(model_dir)))
        add_llama_params(w, cfg, outtype)
        add_hf_tokenizer(w, model_dir, cfg["vocab_size"])
        for name, t in tensors:
            add_weight(w, name, t, outtype)

    return write_gguf(out_path, "llama", fill)
