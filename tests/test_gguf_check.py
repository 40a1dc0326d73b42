"""cpp/gguf_check.cpp: every check has a malformed file that trips it, with the message naming the problem.

The files are tiny models from ggufgen.py with one field broken. A broken file must be refused before
llama.cpp parses it, so each case raises PpowError in this process instead of aborting it.
"""
import struct
import subprocess
import sys

import numpy as np
import pytest

import ggufgen as G
import ppow
from ppow import PpowError


def load(target, drafter=None):
    with ppow.Generator(str(target), None if drafter is None else str(drafter), n_ctx=64) as g:
        return g.generate("hello world", n_predict=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    out = {}
    for name, spec in [("target", G.tiny_target()), ("drafter", G.tiny_model_drafter()),
                       ("reduced", G.tiny_model_drafter(reduced=True)), ("eagle3", G.tiny_eagle3())]:
        out[name] = d / f"{name}.gguf"
        out[name + "_bytes"] = G.write(out[name], *spec)
    return out


def refused(tmp_path, data, match, drafter_of=None):
    """Write `data` and expect PpowError(match), loading it as the target (or as the drafter of drafter_of)."""
    p = tmp_path / "bad.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(PpowError, match=match) as e:
        load(p) if drafter_of is None else load(drafter_of, p)
    assert "\n" not in str(e.value)
    return str(e.value)


def target_with(tmp_path, edit=None, drop=(), add=(), tensors=None, **kw):
    """tiny_target() bytes with KVs replaced ({key: new tuple}), dropped or added."""
    kvs, ts = G.tiny_target()
    kvs = [(edit or {}).get(kv[0], kv) for kv in kvs if kv[0] not in drop] + list(add)
    return G.write(tmp_path / "src.gguf", kvs, tensors or ts, **kw)


def tensor_field(data, name, field):
    """Byte offset of a field ('n_dims', 'dims', 'type', 'offset') in tensor `name`'s record."""
    _, start, end = next(t for t in G.layout(data)["tensor"] if t[0] == name)
    p = start + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, p)[0]
    return {"n_dims": p, "dims": p + 4, "type": p + 4 + 8 * n_dims, "offset": p + 8 + 8 * n_dims}[field]


def patched(data, at, fmt, value):
    b = bytearray(data)
    struct.pack_into(fmt, b, at, value)
    return b


# ----------------------------------------------------------------------------- well-formed files load

@pytest.mark.parametrize("drafter", [None, "drafter", "reduced", "eagle3"])
def test_valid_tiny_models_load(files, drafter):
    out = load(files["target"], files[drafter] if drafter else None)
    assert len(out.tokens) == 2


# ----------------------------------------------------------------------------- header

def test_header(tmp_path, files):
    data = files["target_bytes"]
    refused(tmp_path, b"GGML" + data[4:], "not a GGUF file")
    refused(tmp_path, b"GG", "not a GGUF file")
    refused(tmp_path, data[:10], "truncated GGUF: header: its tensor count at byte 8 needs 8 bytes")
    refused(tmp_path, patched(data, 4, "<I", 1), "GGUF version 1 is not supported")
    refused(tmp_path, patched(data, 4, "<I", 4), "GGUF version 4 is not supported")
    refused(tmp_path, patched(data, 4, "<I", 3 << 24), "big-endian")
    refused(tmp_path, patched(data, 16, "<Q", 10**6), "claims 1000000 key/value records")
    refused(tmp_path, patched(data, 8, "<Q", 2**63), r"claims 9223372036854775808 tensors")


# ----------------------------------------------------------------------------- key/value records

def test_key_value_records(tmp_path, files):
    data = files["target_bytes"]
    kv = {k: (s, e) for k, s, e in G.layout(data)["kv"]}
    name_at = kv["general.name"][0]
    type_at = name_at + 8 + len("general.name")
    refused(tmp_path, patched(data, name_at, "<Q", 0), r"key/value record 1 \(byte 69\) has an empty key")
    refused(tmp_path, patched(data, name_at, "<Q", 2**62),
            r"truncated GGUF: key/value record 1 .*: its key .* needs 4611686018427387904 bytes")
    refused(tmp_path, patched(data, type_at, "<I", 13), "key 'general.name' .* has unknown value type 13")
    refused(tmp_path, patched(data, type_at + 4, "<Q", 2**40),
            r"truncated GGUF: key 'general.name': its string at byte \d+ needs 1099511627776 bytes")
    arr = kv["tokenizer.ggml.scores"][0] + 8 + len("tokenizer.ggml.scores") + 4
    refused(tmp_path, patched(data, arr, "<I", 99), "key 'tokenizer.ggml.scores' .* is an array of unknown type 99")
    refused(tmp_path, patched(data, arr, "<I", G.ARR), "key 'tokenizer.ggml.scores' .* is an array of arrays")
    refused(tmp_path, patched(data, arr + 4, "<Q", 10**9),
            r"truncated GGUF: key 'tokenizer.ggml.scores': 1000000000 float32 values")
    toks = kv["tokenizer.ggml.tokens"][0] + 8 + len("tokenizer.ggml.tokens") + 8
    refused(tmp_path, patched(data, toks, "<Q", 2**61),
            r"key 'tokenizer.ggml.tokens': 2305843009213693952 strings .* need at least")
    bos = kv["tokenizer.ggml.add_bos_token"][1] - 1
    refused(tmp_path, patched(data, bos, "<B", 2),
            r"key 'tokenizer.ggml.add_bos_token': bool at byte \d+ is 2, not 0 or 1")
    refused(tmp_path, target_with(tmp_path, add=[("general.name", G.STR, "again")]), "key 'general.name' appears twice")
    # names from the file are escaped: the message stays one line
    msg = refused(tmp_path, target_with(tmp_path, add=[("evil\nkey", G.U32, 1), ("evil\nkey", G.U32, 2)]),
                  "appears twice")
    assert "evil\\x0akey" in msg


def test_alignment(tmp_path):
    refused(tmp_path, target_with(tmp_path, add=[("general.alignment", G.U64, 32)]),
            "key 'general.alignment' must be a uint32, is uint64")
    refused(tmp_path, target_with(tmp_path, add=[("general.alignment", G.U32, 24)]),
            "'general.alignment' is 24, not a power of two")
    # a valid alignment other than 32 is honoured
    data = target_with(tmp_path, add=[("general.alignment", G.U32, 64)], alignment=64)
    (tmp_path / "a64.gguf").write_bytes(data)
    load(tmp_path / "a64.gguf")


# ----------------------------------------------------------------------------- tensor records

def test_tensor_records(tmp_path, files):
    data = files["target_bytes"]
    kvs, ts = G.tiny_target()
    long = "x" * 64
    refused(tmp_path, G.write(tmp_path / "s.gguf", kvs, ts + [(long, np.ones(4, np.float32))]),
            r"tensor record \d+ \(byte \d+\) has a name of 64 bytes \(1 to 63 allowed\)")
    refused(tmp_path, G.write(tmp_path / "s.gguf", kvs, ts + [ts[1]]), "tensor 'output_norm.weight' appears twice")
    t = "output_norm.weight"
    refused(tmp_path, patched(data, tensor_field(data, t, "n_dims"), "<I", 5), f"tensor '{t}' has 5 dimensions")
    refused(tmp_path, patched(data, tensor_field(data, t, "dims"), "<Q", 2**63 + 1),
            f"tensor '{t}': dimension 0 is negative")
    w = "token_embd.weight"
    dims = tensor_field(data, w, "dims")
    big = patched(patched(data, dims, "<Q", 2**32), dims + 8, "<Q", 2**32)
    refused(tmp_path, big, f"tensor '{w}': shape \\[4294967296, 4294967296\\] has more than 2\\^63 elements")
    big = patched(patched(data, dims, "<Q", 2**31), dims + 8, "<Q", 2**31)
    refused(tmp_path, big, f"tensor '{w}': shape .* overflows its size in bytes")
    refused(tmp_path, patched(data, tensor_field(data, t, "type"), "<I", 4), f"tensor '{t}' has unknown ggml type 4")
    refused(tmp_path, patched(data, tensor_field(data, t, "type"), "<I", 1000),
            f"tensor '{t}' has unknown ggml type 1000")
    q4k = patched(data, tensor_field(data, t, "type"), "<I", 12)  # q4_K: blocks of 256 elements
    refused(tmp_path, q4k, f"tensor '{t}': rows of 32 elements are not a multiple of the q4_K block size 256")
    refused(tmp_path, patched(data, tensor_field(data, t, "offset"), "<Q", 40),
            f"tensor '{t}': data offset 40 is not a multiple of the alignment 32")


def test_data_section(tmp_path, files):
    data = files["target_bytes"]
    lay = G.layout(data)
    refused(tmp_path, data[:len(data) - 100],
            r"truncated GGUF: tensor '.*' needs \d+ bytes at offset \d+ of the data section")
    end_of_infos = lay["tensor"][-1][2]
    assert lay["data"] > end_of_infos  # padding before the data section
    refused(tmp_path, data[:end_of_infos + 1], r"truncated GGUF: the data section would start at byte")
    refused(tmp_path, data[:end_of_infos - 3], r"truncated GGUF: tensor '.*': its data offset")
    t = "output.weight"
    refused(tmp_path, patched(data, tensor_field(data, t, "offset"), "<Q", 0),
            "tensors '.*' and '.*' overlap in the data section")
    refused(tmp_path, patched(data, tensor_field(data, t, "offset"), "<Q", 2**64 - 32), f"tensor '{t}' needs")


# ----------------------------------------------------------------------------- metadata llama.cpp needs

def test_architecture_and_tokenizer_model(tmp_path):
    refused(tmp_path, target_with(tmp_path, drop=["general.architecture"]), "key 'general.architecture' is missing")
    refused(tmp_path, target_with(tmp_path, edit={"general.architecture": ("general.architecture", G.U32, 7)}),
            "key 'general.architecture' must be a string, is uint32")
    refused(tmp_path, target_with(tmp_path, drop=["tokenizer.ggml.model"]), "key 'tokenizer.ggml.model' is missing")
    refused(tmp_path, target_with(tmp_path, edit={"tokenizer.ggml.model": ("tokenizer.ggml.model", G.ARR, [1], G.U8)}),
            "key 'tokenizer.ggml.model' must be a string, is array of uint8")
    refused(tmp_path, target_with(tmp_path, edit={"tokenizer.ggml.model": ("tokenizer.ggml.model", G.STR, "lama")}),
            "key 'tokenizer.ggml.model' is 'lama', a tokenizer llama.cpp does not know")


def test_token_arrays(tmp_path):
    tokens, scores, types = G.spm_vocab()
    n = len(tokens)

    def kv(key, *v):
        return {key: (key, *v)}

    refused(tmp_path, target_with(tmp_path, drop=["tokenizer.ggml.tokens"]), "key 'tokenizer.ggml.tokens' is missing")
    refused(tmp_path, target_with(tmp_path, edit=kv("tokenizer.ggml.tokens", G.ARR, list(range(n)), G.I32)),
            "key 'tokenizer.ggml.tokens' must be an array of strings, is array of int32")
    refused(tmp_path, target_with(tmp_path, edit=kv("tokenizer.ggml.tokens", G.ARR, [], G.STR)), "has 0 tokens")
    dup = list(tokens)
    dup[20] = dup[5]
    refused(tmp_path, target_with(tmp_path, edit=kv("tokenizer.ggml.tokens", G.ARR, dup, G.STR)),
            "token 20 '<0x02>' appears twice")
    empty = list(tokens)
    empty[7], empty[8] = "", "[EMPTY_7]"  # llama.cpp renames an empty token "[EMPTY_<id>]"
    refused(tmp_path, target_with(tmp_path, edit=kv("tokenizer.ggml.tokens", G.ARR, empty, G.STR)),
            r"token 8 '\[EMPTY_7\]' appears twice")
    refused(tmp_path, target_with(tmp_path, edit=kv("tokenizer.ggml.scores", G.ARR, scores[:-1], G.F32)),
            f"key 'tokenizer.ggml.scores' has {n - 1} entries for {n} tokens")
    refused(tmp_path, target_with(tmp_path, edit=kv("tokenizer.ggml.scores", G.ARR, ["x"] * n, G.STR)),
            r"key 'tokenizer.ggml.scores' has the wrong type \(array of string\)")
    refused(tmp_path, target_with(tmp_path, edit=kv("tokenizer.ggml.token_type", G.ARR, types + [1], G.I32)),
            f"key 'tokenizer.ggml.token_type' has {n + 1} entries for {n} tokens")
    bad = list(types)
    bad[10] = 9
    refused(tmp_path, target_with(tmp_path, edit=kv("tokenizer.ggml.token_type", G.ARR, bad, G.I32)),
            "token 10 has unknown type 9")
    refused(tmp_path, target_with(tmp_path, edit=kv("tokenizer.ggml.model", G.STR, "bert")),
            "token 3 is a byte token, which a 'bert'")
    refused(tmp_path, target_with(tmp_path, add=[("tokenizer.ggml.merges", G.ARR, [1, 2], G.I32)]),
            "key 'tokenizer.ggml.merges' must be an array of strings")


def test_special_token_ids(tmp_path):
    n = len(G.spm_vocab()[0])
    bos = "tokenizer.ggml.bos_token_id"
    refused(tmp_path, target_with(tmp_path, edit={bos: (bos, G.U32, n)}),
            f"key 'tokenizer.ggml.bos_token_id' is {n}, outside the vocabulary of {n} tokens")
    refused(tmp_path, target_with(tmp_path, add=[("tokenizer.ggml.padding_token_id", G.I32, -1)]),
            "padding_token_id' is -1")
    refused(tmp_path, target_with(tmp_path, add=[("tokenizer.ggml.eot_token_id", G.STR, "2")]),
            "key 'tokenizer.ggml.eot_token_id' must be an integer, is string")


def test_placeholder_vocabulary_size(tmp_path, files):
    kvs, ts = G.tiny_model_drafter(reduced=True)
    kvs = [("llama.vocab_size", G.U32, 2**32 - 1) if k[0] == "llama.vocab_size" else k for k in kvs]
    p = tmp_path / "d.gguf"
    refused(tmp_path, G.write(p, kvs, ts), "key 'llama.vocab_size' is 4294967295", drafter_of=files["target"])


# ----------------------------------------------------------------------------- roles and ppow's own keys

def test_tokenizerless_files(tmp_path, files):
    # A drafter GGUF given as the target: llama.cpp loads it but would abort at the first tokenize.
    with pytest.raises(PpowError, match="has no vocabulary of its own"):
        load(files["reduced"])
    with pytest.raises(PpowError, match="eagle3 requires ctx_other"):  # llama.cpp refuses this one itself
        load(files["eagle3"])
    # A standalone drafter without a map and without a vocabulary: the token spot-check would abort.
    kvs, ts = G.tiny_model_drafter()
    n = len(G.spm_vocab()[0])
    kvs = [k for k in kvs if not k[0].startswith("tokenizer.")] + [("tokenizer.ggml.model", G.STR, "none"),
                                                                  ("llama.vocab_size", G.U32, n)]
    G.write(tmp_path / "d.gguf", kvs, ts)
    with pytest.raises(PpowError, match="drafter without a draft-vocabulary map .* has no vocabulary"):
        load(files["target"], tmp_path / "d.gguf")


def test_ppow_keys_of_the_wrong_kind(tmp_path, files):
    # gguf_get_arr_* abort on a scalar: ppow's own array keys are checked before they are read.
    kvs, ts = G.tiny_model_drafter(reduced=True)
    kvs = [("ppow.draft_vocab.d2t", G.I32, 3) if k[0] == "ppow.draft_vocab.d2t" else k for k in kvs]
    refused(tmp_path, G.write(tmp_path / "d.gguf", kvs, ts), "ppow.draft_vocab.d2t .* is not an integer array",
            drafter_of=files["target"])
    kvs, ts = G.tiny_eagle3()
    kvs = [("eagle3.target_layers", G.U32, 0) if k[0] == "eagle3.target_layers" else k for k in kvs]
    refused(tmp_path, G.write(tmp_path / "e.gguf", kvs, ts), "failed to load model", drafter_of=files["target"])


def test_ppow_run_exits_2_with_one_line(tmp_path, files):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(files["target_bytes"][:5000])
    for args in (["-m", str(bad)], ["-m", str(files["target"]), "-md", str(bad)], ["-m", str(files["eagle3"])]):
        r = subprocess.run([sys.executable, "-m", "ppow.cli.run", *args, "-n", "2", "-p", "hi"] +
                           ([] if "-md" in args else ["-md", "none"]), capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ppow-run: error: "), r.stderr


def test_hyperparameters_llama_cpp_asserts_on(tmp_path):
    """Standard <arch>.* keys whose bad values end in a GGML_ASSERT in llama.cpp's hyperparameter loader."""
    def with_kv(key, t, v):
        present = key == "llama.block_count"
        return target_with(tmp_path, edit={key: (key, t, v)}, add=[] if present else [(key, t, v)])

    refused(tmp_path, with_kv("llama.block_count", G.U32, 0), r"key 'llama.block_count' is 0 \(1 to 512 accepted\)")
    refused(tmp_path, with_kv("llama.block_count", G.U32, 513), "key 'llama.block_count' is 513")
    refused(tmp_path, with_kv("llama.nextn_predict_layers", G.U32, 3), "key 'llama.nextn_predict_layers' is 3")
    refused(tmp_path, with_kv("llama.expert_count", G.U32, 5000), "key 'llama.expert_count' is 5000")
    refused(tmp_path, with_kv("llama.expert_used_count", G.U32, 2), "key 'llama.expert_used_count' is 2")
    refused(tmp_path, target_with(tmp_path, add=[("llama.expert_count", G.U32, 8)]),
            "key 'llama.expert_used_count' is 0")
    refused(tmp_path, with_kv("llama.expert_group_count", G.U32, 2), "key 'llama.expert_group_count' is 2")
    experts = [("llama.expert_count", G.U32, 8), ("llama.expert_used_count", G.U32, 2),
               ("llama.expert_group_count", G.U32, 3)]
    refused(tmp_path, target_with(tmp_path, add=experts),
            "key 'llama.expert_group_used_count' is 0")
    refused(tmp_path, with_kv("llama.rope.scaling.type", G.STR, "cubic"),
            "key 'llama.rope.scaling.type' is 'cubic', which llama.cpp does not know")


def test_split_models(tmp_path):
    """llama.cpp opens the other files of a split model itself (<prefix>-0000i-of-0000n.gguf): they are checked too."""
    kvs, ts = G.tiny_target()
    split = [("split.count", G.U16, 2), ("split.tensors.count", G.I32, len(ts))]
    first, second = tmp_path / "m-00001-of-00002.gguf", tmp_path / "m-00002-of-00002.gguf"
    G.write(first, kvs + [("split.no", G.U16, 0)] + split, ts[:5])
    G.write(second, [("split.no", G.U16, 1)] + split, ts[5:])
    load(first)
    G.write(second, [("split.no", G.U32, 1)] + split, ts[5:])  # llama.cpp reads it with an asserting getter
    with pytest.raises(PpowError, match=r"m-00002-of-00002.gguf: key 'split.no' must be a uint16, is uint32"):
        load(first)
    second.write_bytes(G.write(second, [("split.no", G.U16, 1)] + split, ts[5:])[:3000])
    with pytest.raises(PpowError, match=r"m-00002-of-00002.gguf: truncated GGUF"):
        load(first)
    second.unlink()
    with pytest.raises(PpowError, match=r"m-00002-of-00002.gguf: cannot open the file"):
        load(first)


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), float("inf")])
def test_norm_epsilon(tmp_path, eps):
    """ggml's norm kernels assert eps >= 0 at the first decode (a fuzzer found the negative one)."""
    key = "llama.attention.layer_norm_rms_epsilon"
    refused(tmp_path, target_with(tmp_path, edit={key: (key, G.F32, eps)}),
            rf"key '{key}' is \S+ \(a norm epsilon must be a finite number >= 0\)")


def test_tensor_types_llama_cpp_cannot_compute_with(tmp_path, files):
    """Types ggml's CPU kernels have no path for (found by the fuzzers: an i32 weight calls a null matmul kernel)."""
    data = files["target_bytes"]
    for name, t, msg in [("blk.0.ffn_down.weight", 26, "has type i32, not a float or quantized type"),
                         ("blk.0.attn_q.weight", 9, "has type q8_1, not a float or quantized type"),
                         ("output_norm.weight", 1, r"has type f16, not f32, as a 1-D tensor \(norm or bias\)")]:
        refused(tmp_path, patched(data, tensor_field(data, name, "type"), "<I", t), f"tensor '{name}' {msg}")
    eagle3 = files["eagle3_bytes"]
    kvs, ts = G.tiny_eagle3()
    ts = [(n, a.astype(np.int32) if n == "d2t" else a) for n, a in ts]
    refused(tmp_path, G.write(tmp_path / "e.gguf", kvs, ts), "tensor 'd2t' has type i32, not a 1-D i64 map",
            drafter_of=files["target"])
    assert eagle3  # the well-formed eagle3 (i64 d2t) loads: test_valid_tiny_models_load


def test_nul_bytes(tmp_path):
    """llama.cpp reads keys, names and strings up to a NUL: a key "a\\0x" would answer for "a"."""
    refused(tmp_path, target_with(tmp_path, add=[("llama.block_count\0x", G.U32, 0)]),
            r"has a key with a NUL byte: 'llama.block_count\\x00x'")
    tokens = list(G.spm_vocab()[0])
    tokens[20] = tokens[5] + "\0tail"  # the same token as far as llama.cpp can see
    key = "tokenizer.ggml.tokens"
    refused(tmp_path, target_with(tmp_path, edit={key: (key, G.ARR, tokens, G.STR)}), "token 20 '<0x02>' appears twice")
    arch = "general.architecture"  # still the llama architecture to llama.cpp: its keys are still checked
    refused(tmp_path, target_with(tmp_path, edit={arch: (arch, G.STR, "llama\0x"),
                                                  "llama.block_count": ("llama.block_count", G.U32, 0)}),
            "key 'llama.block_count' is 0")


def test_llama_cpp_refusals_keep_their_reason(tmp_path):
    """A file that passes the checks but that llama.cpp refuses: its reason, not "failed to load model" alone."""
    refused(tmp_path, target_with(tmp_path, drop=["llama.context_length"]),
            "error loading model hyperparameters: key not found in model: llama.context_length")
