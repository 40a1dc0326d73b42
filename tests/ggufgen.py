"""Tiny GGUF files written byte by byte, for the GGUF checks and the fuzzers.

gguf.GGUFWriter only writes well-formed files; tests of malformed ones need every field in hand.
`write(path, kvs, tensors, ...)` serialises the GGUF layout directly (and can lie in the header),
`layout(data)` returns where each record and integer field of a well-formed file lies, and the `tiny_*` functions
give loadable models in milliseconds: a Llama target with a SentencePiece-style vocabulary, a
standalone drafter (full or reduced draft vocabulary) and an eagle3 feature drafter.
"""
import struct

import numpy as np

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B", U64: "<Q",
        I64: "<q", F64: "<d"}
GGML = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int32): 26, np.dtype(np.int64): 27}


def gstr(s):
    b = s.encode() if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _value(t, v):
    return gstr(v) if t == STR else struct.pack(_FMT[t], v)


def kv_bytes(key, t, value, elem=None):
    """One key/value record: (key, type, value) or, for arrays, (key, ARR, values, element type)."""
    out = gstr(key) + struct.pack("<I", t)
    if t == ARR:
        return out + struct.pack("<IQ", elem, len(value)) + b"".join(_value(elem, x) for x in value)
    return out + _value(t, value)


def tensor_bytes(name, ne, gtype, offset):
    dims = struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
    return gstr(name) + dims + struct.pack("<IQ", gtype, offset)


def write(path, kvs, tensors, version=3, alignment=32, n_kv=None, n_tensors=None):
    """A GGUF file. kvs: tuples for kv_bytes; tensors: (name, numpy array). n_kv/n_tensors override the
    header counts. Returns the bytes written."""
    blobs, infos, off = [], [], 0
    for name, a in tensors:
        a = np.ascontiguousarray(a)
        infos.append(tensor_bytes(name, list(reversed(a.shape)), GGML[a.dtype], off))
        raw = a.tobytes()
        pad = -len(raw) % alignment
        blobs.append(raw + b"\0" * pad)
        off += len(raw) + pad
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    meta = head + b"".join(kv_bytes(*kv) for kv in kvs) + b"".join(infos)
    data = meta + b"\0" * (-len(meta) % alignment) + b"".join(blobs)
    with open(path, "wb") as f:
        f.write(data)
    return data


def layout(data):
    """Where the records of a well-formed GGUF lie: {'kv': [(key, start, end)], 'tensor': [(name, start, end)],
    'data': start of the data section, 'fields': [(label, offset, width)]} where fields are the integer
    fields a parser trusts: counts, string and array lengths, types, dimensions, offsets, numeric values."""
    fields = [("version", 4, 4), ("tensor count", 8, 8), ("kv count", 16, 8)]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def string(p, label):
        (n,) = struct.unpack_from("<Q", data, p)
        fields.append((label + " length", p, 8))
        return data[p + 8:p + 8 + n].decode(errors="replace"), p + 8 + n

    kv, tensors = [], []
    for _ in range(n_kv):
        start = pos
        key, pos = string(pos, "key")
        (t,) = struct.unpack_from("<I", data, pos)
        fields.append((f"{key} type", pos, 4))
        pos += 4
        if t == ARR:
            elem, n = struct.unpack_from("<IQ", data, pos)
            fields += [(f"{key} element type", pos, 4), (f"{key} array length", pos + 4, 8)]
            pos += 12
            for i in range(n):
                if elem == STR:
                    pos = string(pos, f"{key}[{i}]")[1] if i < 4 else pos + 8 + struct.unpack_from("<Q", data, pos)[0]
                else:
                    if i < 4:
                        fields.append((f"{key}[{i}]", pos, struct.calcsize(_FMT[elem])))
                    pos += struct.calcsize(_FMT[elem])
        elif t == STR:
            pos = string(pos, f"{key} value")[1]
        else:
            fields.append((f"{key} value", pos, struct.calcsize(_FMT[t])))
            pos += struct.calcsize(_FMT[t])
        kv.append((key, start, pos))
    for _ in range(n_tensors):
        start = pos
        name, pos = string(pos, "tensor name")
        (nd,) = struct.unpack_from("<I", data, pos)
        fields.append((f"{name} n_dims", pos, 4))
        fields += [(f"{name} dim {d}", pos + 4 + 8 * d, 8) for d in range(nd)]
        pos += 4 + 8 * nd
        fields += [(f"{name} type", pos, 4), (f"{name} offset", pos + 4, 8)]
        pos += 12
        tensors.append((name, start, pos))
    return {"kv": kv, "tensor": tensors, "data": pos + (-pos % 32), "fields": fields}


# ----------------------------------------------------------------------------- tiny models

def spm_vocab(n_words=40):
    """<unk> <s> </s>, the 256 byte tokens, then word pieces: (tokens, scores, token types)."""
    words = ["\u2581" + w for w in "the a hello world robot river paint light blue green gold day".split()]
    words += list("abcdefghijklmnopqrstuvwxyz") + ["\u2581"]
    words = words[:n_words]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + words
    scores = [0.0, 0.0, 0.0] + [-1000.0] * 256 + [-float(i) for i in range(len(words))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(words)
    return tokens, scores, types


def tokenizer_kvs(tokens, scores, types):
    return [("tokenizer.ggml.model", STR, "llama"), ("tokenizer.ggml.tokens", ARR, tokens, STR),
            ("tokenizer.ggml.scores", ARR, scores, F32), ("tokenizer.ggml.token_type", ARR, types, I32),
            ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2),
            ("tokenizer.ggml.unknown_token_id", U32, 0), ("tokenizer.ggml.add_bos_token", BOOL, 1)]


def llama_kvs(n_embd, n_layer, n_head, n_ff, vocab_size=None):
    kvs = [("general.architecture", STR, "llama"), ("general.name", STR, "tiny"),
           ("llama.context_length", U32, 256), ("llama.embedding_length", U32, n_embd),
           ("llama.block_count", U32, n_layer), ("llama.feed_forward_length", U32, n_ff),
           ("llama.attention.head_count", U32, n_head), ("llama.attention.head_count_kv", U32, n_head),
           ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5), ("llama.rope.dimension_count", U32, n_embd // n_head),
           ("general.file_type", U32, 0)]
    if vocab_size is not None:
        kvs.append(("llama.vocab_size", U32, vocab_size))
    return kvs


def llama_tensors(n_vocab, n_embd, n_layer, n_ff, seed=0):
    rng = np.random.default_rng(seed)

    def mat(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    t = [("token_embd.weight", mat(n_vocab, n_embd)), ("output_norm.weight", np.ones(n_embd, np.float32)),
         ("output.weight", mat(n_vocab, n_embd))]
    for i in range(n_layer):
        ones = np.ones(n_embd, np.float32)
        t += [(f"blk.{i}.{name}.weight", a) for name, a in [
            ("attn_norm", ones), ("attn_q", mat(n_embd, n_embd)), ("attn_k", mat(n_embd, n_embd)),
            ("attn_v", mat(n_embd, n_embd)), ("attn_output", mat(n_embd, n_embd)), ("ffn_norm", ones),
            ("ffn_gate", mat(n_ff, n_embd)), ("ffn_up", mat(n_ff, n_embd)), ("ffn_down", mat(n_embd, n_ff))]]
    return t


def tiny_target(n_embd=32, n_layer=2, n_head=2, n_ff=64):
    """(kvs, tensors) of a loadable Llama target with a SentencePiece-style vocabulary (~300 tokens)."""
    tokens, scores, types = spm_vocab()
    return (llama_kvs(n_embd, n_layer, n_head, n_ff) + tokenizer_kvs(tokens, scores, types),
            llama_tensors(len(tokens), n_embd, n_layer, n_ff))


def tiny_model_drafter(reduced=False, n_embd=32, n_head=2, n_ff=64):
    """(kvs, tensors) of a 1-layer standalone drafter for tiny_target(): its vocabulary, or with `reduced`
    a draft vocabulary of 64 target tokens (tokenizer 'none' + ppow.draft_vocab.d2t, as ppow-convert writes)."""
    tokens, scores, types = spm_vocab()
    if not reduced:
        kvs = llama_kvs(n_embd, 1, n_head, n_ff) + tokenizer_kvs(tokens, scores, types)
        return kvs, llama_tensors(len(tokens), n_embd, 1, n_ff, seed=1)
    d2t = list(range(0, 3)) + list(range(259, 259 + 36)) + list(range(3, 28))
    kvs = llama_kvs(n_embd, 1, n_head, n_ff, vocab_size=len(d2t)) + [
        ("tokenizer.ggml.model", STR, "none"), ("ppow.draft_vocab.d2t", ARR, d2t, I32),
        ("ppow.draft_vocab.unk_id", I32, 0), ("ppow.target.n_vocab", U32, len(tokens))]
    return kvs, llama_tensors(len(d2t), n_embd, 1, n_ff, seed=1)


def tiny_eagle3(n_target_layers=2, n_embd=32, n_head=2, n_ff=64, n_draft=64, seed=2):
    """(kvs, tensors) of an eagle3 feature drafter for tiny_target() (random weights, reduced head)."""
    n_vocab = len(spm_vocab()[0])
    hd = n_embd // n_head
    rng = np.random.default_rng(seed)

    def mat(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    kvs = [("general.architecture", STR, "eagle3"), ("eagle3.context_length", U32, 256),
           ("eagle3.embedding_length", U32, n_embd), ("eagle3.block_count", U32, 1),
           ("eagle3.feed_forward_length", U32, n_ff), ("eagle3.attention.head_count", U32, n_head),
           ("eagle3.attention.head_count_kv", U32, n_head), ("eagle3.attention.key_length", U32, hd),
           ("eagle3.attention.value_length", U32, hd), ("eagle3.attention.layer_norm_rms_epsilon", F32, 1e-5),
           ("eagle3.rope.freq_base", F32, 10000.0),
           ("eagle3.target_layers", ARR, [0, n_target_layers // 2, n_target_layers - 1], I32),
           ("eagle3.target_hidden_size", U32, n_embd), ("eagle3.vocab_size", U32, n_vocab),
           ("tokenizer.ggml.model", STR, "none")]
    d2t = np.sort(rng.choice(n_vocab, size=n_draft, replace=False)).astype(np.int64)
    ones = np.ones(n_embd, np.float32)
    tensors = [("fc.weight", mat(n_embd, 3 * n_embd)), ("output_norm.weight", ones),
               ("output.weight", mat(n_draft, n_embd)), ("d2t", d2t)]
    tensors += [(f"blk.0.{name}.weight", a) for name, a in [
        ("attn_norm", ones), ("attn_norm_2", ones), ("attn_q", mat(n_head * hd, 2 * n_embd)),
        ("attn_k", mat(n_head * hd, 2 * n_embd)), ("attn_v", mat(n_head * hd, 2 * n_embd)),
        ("attn_output", mat(n_embd, n_head * hd)), ("ffn_norm", ones), ("ffn_gate", mat(n_ff, n_embd)),
        ("ffn_up", mat(n_ff, n_embd)), ("ffn_down", mat(n_embd, n_ff))]]
    return kvs, tensors
