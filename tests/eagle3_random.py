"""Random-weight `eagle3` GGUFs for engine tests: the runtime must stay lossless whatever the drafter
proposes, so a drafter whose weights are noise (or that copies the target's head rows, so it
agrees with the target often enough for windows to be accepted) exercises every path."""
import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType


def target_shape(target_gguf):
    r = GGUFReader(str(target_gguf))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()

    def val(key):
        f = r.fields[f"{arch}.{key}"]
        return f.parts[f.data[0]][0].item()

    n_vocab = len(r.fields["tokenizer.ggml.tokens"].data)
    return dict(arch=arch, n_embd=int(val("embedding_length")), n_layer=int(val("block_count")), n_vocab=n_vocab,
                rope_base=float(val("rope.freq_base")) if f"{arch}.rope.freq_base" in r.fields else 10000.0,
                eps=float(val("attention.layer_norm_rms_epsilon")))


def write_random_eagle3(path, target_gguf, layers=None, n_draft_vocab=None, n_head=2, head_dim=None, n_ff=None,
                        seed=0, scale=0.05, d2t=None, overrides=None):
    """An eagle3 drafter for `target_gguf` with random weights. `overrides` replaces metadata values
    (key -> value, None drops the key) to build deliberately wrong files."""
    t = target_shape(target_gguf)
    H, nv = t["n_embd"], t["n_vocab"]
    head_dim = head_dim or H // n_head
    n_ff = n_ff or 2 * H
    layers = layers if layers is not None else [0, t["n_layer"] // 2, t["n_layer"] - 1]
    rng = np.random.default_rng(seed)
    if d2t is None:
        nd = n_draft_vocab or nv
        d2t = np.sort(rng.choice(nv, size=nd, replace=False)).astype(np.int64)
    d2t = np.asarray(d2t, dtype=np.int64)
    meta = {
        "eagle3.context_length": ("u32", 4096), "eagle3.embedding_length": ("u32", H),
        "eagle3.block_count": ("u32", 1), "eagle3.feed_forward_length": ("u32", n_ff),
        "eagle3.attention.head_count": ("u32", n_head), "eagle3.attention.head_count_kv": ("u32", n_head),
        "eagle3.attention.key_length": ("u32", head_dim), "eagle3.attention.value_length": ("u32", head_dim),
        "eagle3.attention.layer_norm_rms_epsilon": ("f32", t["eps"]), "eagle3.rope.freq_base": ("f32", t["rope_base"]),
        "eagle3.target_layers": ("i32arr", list(layers)), "eagle3.target_hidden_size": ("u32", H),
        "eagle3.vocab_size": ("u32", nv), "tokenizer.ggml.model": ("str", "none"),
    }
    for k, v in (overrides or {}).items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = (meta[k][0] if k in meta else "u32", v)
    w = GGUFWriter(str(path), "eagle3")
    for k, (kind, v) in meta.items():
        if kind == "u32":
            w.add_uint32(k, int(v))
        elif kind == "f32":
            w.add_float32(k, float(v))
        elif kind == "str":
            w.add_string(k, v)
        else:
            w.add_array(k, list(map(int, v)))  # python ints: an INT32 array

    def mat(*shape):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    tensors = {
        "fc.weight": mat(H, 3 * H) / 30.0, "output_norm.weight": np.ones(H, np.float32),
        "output.weight": mat(len(d2t), H) * 20, "d2t": d2t,
        "blk.0.attn_norm.weight": np.ones(H, np.float32), "blk.0.attn_norm_2.weight": np.ones(H, np.float32),
        "blk.0.attn_q.weight": mat(n_head * head_dim, 2 * H), "blk.0.attn_k.weight": mat(n_head * head_dim, 2 * H),
        "blk.0.attn_v.weight": mat(n_head * head_dim, 2 * H), "blk.0.attn_output.weight": mat(H, n_head * head_dim),
        "blk.0.ffn_norm.weight": np.ones(H, np.float32), "blk.0.ffn_gate.weight": mat(n_ff, H),
        "blk.0.ffn_up.weight": mat(n_ff, H), "blk.0.ffn_down.weight": mat(H, n_ff),
    }
    for name, arr in tensors.items():
        w.add_tensor(name, arr, raw_dtype=GGMLQuantizationType.I64 if arr.dtype == np.int64 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)
