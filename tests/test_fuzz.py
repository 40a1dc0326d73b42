"""Fuzz tests: malformed model files, converter inputs, caches and checkpoints give a clean error, never a crash.

GGUF: tiny targets and drafters of every kind (ggufgen.py, and a target made by ppow-convert) get
mutated headers, key/value records, tensor records, metadata values and truncations; each file is
loaded in a subprocess that builds a ppow.Generator and generates 2 tokens. The process must exit 0,
or exit 2 with ppow's one-line error: a signal (an abort in llama.cpp), another exception or a hang
fails, and the file is kept as tests/regressions/gguf/<sha>.gguf, which test_gguf_regressions replays
(as a target and as a drafter) from then on.

Converter (config.json values, safetensors headers, draft-vocabulary maps) and trainer inputs (caches,
checkpoints) are fuzzed in this process: they must load, or raise ConvertError / ValueError.

Budget: PPOW_FUZZ_EXAMPLES examples per fuzzer (default 50; the CI profile). A long run sets it high and
PPOW_FUZZ_REPORT=<file.json> to get the number of cases run and the errors seen.
"""
import collections
import glob
import hashlib
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import ggufgen as G  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REGRESSIONS = os.path.join(HERE, "regressions", "gguf")
N_EXAMPLES = int(os.environ.get("PPOW_FUZZ_EXAMPLES", "50"))
# No shrinking: the first failing file is the one kept (shrinking would re-run subprocesses and keep
# every intermediate file). No example database: nothing is written into the working tree but regressions.
FUZZ = settings(max_examples=N_EXAMPLES, deadline=None, database=None, print_blob=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])

STATS = collections.defaultdict(collections.Counter)  # fuzzer -> outcome -> count (PPOW_FUZZ_REPORT)


def record(fuzzer, outcome):
    outcome = re.sub(r"/\S+\.(gguf|json|safetensors)|/tmp/\S+", "PATH", outcome)
    STATS[fuzzer][re.sub(r"\d+", "N", outcome)[:160]] += 1


class Case(bytes):
    """Mutated file contents that print as the mutation, not as 200 kB of bytes."""

    def __new__(cls, data, what):
        self = super().__new__(cls, data)
        self.what = what
        return self

    def __repr__(self):
        return f"<{len(self)} bytes: {self.what}>"


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    path = os.environ.get("PPOW_FUZZ_REPORT")
    if path:
        out = {k: {"cases": sum(v.values()), "outcomes": dict(v.most_common())} for k, v in STATS.items()}
        with open(path, "w") as f:
            json.dump(out, f, indent=1)


# ----------------------------------------------------------------------------- GGUF files in a subprocess

RUNNER = """
import sys, ppow
target, drafter = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
try:
    with ppow.Generator(target, drafter, n_ctx=64, n_threads=1) as g:
        g.generate("hello world", n_predict=2)
except (ppow.PpowError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
"""


MEMORY_CAP = 8 << 30  # address space of a fuzzed load: an input that asks for more must fail, not swap the machine


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


@pytest.fixture
def capped():
    """As much again for the in-process fuzzers, on top of what this process maps already (soft limit
    only, restored afterwards; Linux)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * resource.getpagesize()
    except OSError:
        yield
        return
    cap = mapped + MEMORY_CAP
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run_model(target, drafter=None, timeout=120):
    env = dict(os.environ, GGML_NO_BACKTRACE="1")  # an abort prints no gdb backtrace (slow)
    env.pop("PPOW_VERBOSE", None)
    args = [sys.executable, "-c", RUNNER, str(target)] + ([str(drafter)] if drafter else [])
    try:
        r = subprocess.run(args, capture_output=True, text=True, errors="replace", timeout=timeout, env=env,
                           preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        return None, "timeout"
    return r.returncode, r.stderr


def failure(rc, err):
    """None for a clean outcome (generated, or ppow's one-line error), else what went wrong."""
    if rc is None:
        return "hung (timeout)"
    if rc < 0:
        return f"killed by signal {-rc}"
    lines = err.strip().splitlines()
    if rc == 0:
        return None
    if rc == 2 and len(lines) >= 1 and lines[-1].startswith("error: "):
        return None
    return f"exit {rc} without ppow's error"


def keep_regression(data):
    sha = hashlib.sha256(data).hexdigest()[:16]
    path = os.path.join(REGRESSIONS, f"{sha}.gguf")
    try:
        os.makedirs(REGRESSIONS, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    except OSError:
        return f"(could not write {path})"
    return path


@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp(prefix="ppow-fuzz-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def bases(workdir):
    """Well-formed files: {name: (path, bytes, layout)}."""
    out = {}
    for name, spec in [("target", G.tiny_target()), ("drafter", G.tiny_model_drafter()),
                       ("reduced", G.tiny_model_drafter(reduced=True)), ("eagle3", G.tiny_eagle3())]:
        path = os.path.join(workdir, f"{name}.gguf")
        data = Case(G.write(path, *spec), f"well-formed {name}")
        out[name] = (path, data, G.layout(data))
    return out


@pytest.fixture(scope="module")
def bpe_target(workdir):
    """A target made by ppow-convert from an (untrained) HF checkpoint: byte-level BPE with merges."""
    import tinymodels
    from ppow_convert import convert_hf

    hf = os.path.join(workdir, "hf-target")
    tinymodels.build_model(hf, tinymodels.train_bpe_tokenizer(), n_layer=2, steps=1)
    path = convert_hf(hf, os.path.join(workdir, "bpe-target.gguf"), "f32")
    with open(path, "rb") as f:
        data = Case(f.read(), "well-formed ppow-convert target")
    return hf, (path, data, G.layout(data))


F32_BITS = [0x00000000, 0x80000000, 0x7FC00000, 0x7F800000, 0xFF800000, 0xBF800000, 0x00000001]
U32_VALUES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 26, 27, 30, 31, 39, 42, 43, 64, 255, 256, 512, 513, 65535,
              2**31 - 1, 2**31, 2**32 - 1] + F32_BITS
U64_VALUES = [0, 1, 2, 3, 7, 8, 31, 32, 33, 63, 64, 255, 256, 4096, 65536, 2**31, 2**32 - 1, 2**32, 2**40, 2**62,
              2**63 - 1, 2**63, 2**64 - 32, 2**64 - 1]


def int_value(width):
    pool = {1: [0, 1, 2, 127, 128, 255], 2: [0, 1, 255, 256, 32767, 32768, 65535], 4: U32_VALUES, 8: U64_VALUES}[width]
    return st.one_of(st.sampled_from(pool), st.integers(0, 2 ** (8 * width) - 1))


@st.composite
def gguf_mutation(draw, base):
    """A Case: a well-formed file with one structured change."""
    _, data, lay = base
    b = bytearray(data)
    kind = draw(st.sampled_from(["field", "field", "value", "header", "kv", "tensor", "truncate", "drop", "bytes64k"]))
    if kind in ("field", "value"):
        fields = lay["fields"]
        if kind == "value":  # metadata values: scalars and the first array entries
            fields = [f for f in fields if f[0].endswith(" value") or "]" in f[0]]
        changes = []
        for _ in range(draw(st.integers(1, 3))):
            label, off, width = draw(st.sampled_from(fields))
            v = draw(int_value(width))
            b[off:off + width] = v.to_bytes(width, "little")
            changes.append(f"{label}={v}")
        return Case(b, f"{kind}: " + ", ".join(changes))
    if kind == "truncate":
        cut = draw(st.one_of(st.integers(0, lay["data"] + 64), st.integers(0, len(data) - 1)))
        return Case(b[:cut], f"truncated to {cut} bytes")
    if kind == "drop":  # remove one key/value record (and count it out): a file missing a key
        key, s, e = draw(st.sampled_from(lay["kv"]))
        n_kv = struct.unpack_from("<Q", data, 16)[0]
        return Case(b[:16] + struct.pack("<Q", n_kv - 1) + b[24:s] + b[e:], f"dropped key {key}")
    if kind == "header":
        span, label = (4, 24), "header"  # after the magic (a wrong magic is one check, tested enough)
    elif kind == "kv":
        key, s, e = draw(st.sampled_from(lay["kv"]))
        span, label = (s, e), f"key {key}"
    elif kind == "tensor":
        name, s, e = draw(st.sampled_from(lay["tensor"]))
        span, label = (s, e), f"tensor {name}"
    else:
        span, label = (0, min(len(data), 65536)), "first 64 KiB"
    changes = []
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(span[0], span[1] - 1))
        v = draw(st.integers(0, 255))
        b[at] = v
        changes.append(f"{at}={v}")
    return Case(b, f"{label}: bytes " + ", ".join(changes))


def check_gguf_case(fuzzer, workdir, data, target=None):
    """Load `data` as the target (or as the drafter of `target`) in a subprocess."""
    path = os.path.join(workdir, f"case-{hashlib.sha256(data).hexdigest()[:16]}.gguf")
    with open(path, "wb") as f:
        f.write(data)
    try:
        rc, err = run_model(path) if target is None else run_model(target, path)
    finally:
        os.remove(path)
    bad = failure(rc, err)
    record(fuzzer, bad or ("generated" if rc == 0 else err.strip().splitlines()[-1]))
    if bad:
        kept = keep_regression(data)
        pytest.fail(f"{fuzzer}: {data.what}: {bad}; the file is kept as {kept}\n{err[-3000:] if err else ''}")


@FUZZ
@given(data=st.data())
def test_fuzz_gguf_target(bases, workdir, data):
    check_gguf_case("gguf target (spm)", workdir, data.draw(gguf_mutation(bases["target"])))


@FUZZ
@given(data=st.data())
def test_fuzz_gguf_bpe_target(bpe_target, workdir, data):
    check_gguf_case("gguf target (bpe, ppow-convert)", workdir, data.draw(gguf_mutation(bpe_target[1])))


@pytest.mark.parametrize("kind", ["drafter", "reduced", "eagle3"])
@FUZZ
@given(data=st.data())
def test_fuzz_gguf_drafter(bases, workdir, kind, data):
    check_gguf_case(f"gguf drafter ({kind})", workdir, data.draw(gguf_mutation(bases[kind])), target=bases["target"][0])


SHIPPED = os.path.join(os.path.dirname(HERE), "python", "ppow", "drafters", "gemma3-270m-ppow.gguf")


@pytest.fixture(scope="module")
def shipped():
    if not os.path.isfile(SHIPPED):
        pytest.skip("no shipped drafter in this checkout")
    with open(SHIPPED, "rb") as f:
        data = Case(f.read(), "the shipped drafter")
    return SHIPPED, data, G.layout(data)


@FUZZ
@given(data=st.data())
def test_fuzz_gguf_shipped_drafter_as_target(shipped, workdir, data):
    """The issue's case: a shipped drafter, changed in its metadata, handed to ppow-run -m."""
    check_gguf_case("gguf shipped drafter as target", workdir, data.draw(gguf_mutation(shipped)))


def test_gguf_regressions(bases):
    """Every file a fuzzer once crashed on, as a target and as a drafter: a clean outcome now."""
    bad = []
    for path in sorted(glob.glob(os.path.join(REGRESSIONS, "*.gguf"))):
        for rc, err in (run_model(path), run_model(bases["target"][0], path)):
            why = failure(rc, err)
            if why:
                bad.append(f"{os.path.basename(path)}: {why}: {err.strip().splitlines()[-1:] if err else ''}")
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------------------- converter inputs

JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40), st.sampled_from([0, 1, 2, 3, 4, 64, 512]),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                        st.lists(st.integers(-2, 70), max_size=4),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def mutate_json(draw, d):
    d = dict(d)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(d) + ["rope_scaling", "head_dim", "tie_word_embeddings"]))
        if draw(st.booleans()) and key in d:
            del d[key]
        else:
            d[key] = draw(JSON_VALUES)
    return d


def convert_clean(fuzzer, fn, *args):
    from ppow_convert import ConvertError

    try:
        fn(*args)
        record(fuzzer, "converted")
    except ConvertError as e:
        record(fuzzer, f"ConvertError: {e}")
        assert str(e) and "\n" not in str(e).strip()
    except Exception as e:  # noqa: BLE001 - the property: nothing but ConvertError
        record(fuzzer, f"UNCLEAR {type(e).__name__}: {e}")
        raise AssertionError(f"{fuzzer}: {type(e).__name__} instead of ConvertError: {e}") from e


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def link_dir(src, dst, replace=()):
    """dst: a copy of the checkpoint dir src made of symlinks, except the files in `replace`."""
    os.makedirs(dst)
    for name in os.listdir(src):
        if name not in replace:
            os.symlink(os.path.join(src, name), os.path.join(dst, name))


def fresh(workdir, name):
    d = os.path.join(workdir, name)
    shutil.rmtree(d, ignore_errors=True)
    return d


def safetensors_bytes(tensors):
    """A safetensors file of numpy arrays (any dtype, unlike safetensors.numpy's checks on names)."""
    header, blobs, off = {}, [], 0
    codes = {"float32": "F32", "float16": "F16", "float64": "F64", "int64": "I64", "int32": "I32", "int16": "I16",
             "int8": "I8", "uint8": "U8", "bool": "BOOL"}
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        header[name] = {"dtype": codes[str(a.dtype)], "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


@pytest.fixture(scope="module")
def ckpts(workdir, bpe_target):
    """Checkpoint dirs for the converter: the HF target, a reduced-vocabulary standalone drafter and a
    feature drafter, all for bpe_target."""
    from gguf import GGUFReader

    hf, (target_gguf, _, _) = bpe_target
    n_target = len(GGUFReader(target_gguf).fields["tokenizer.ggml.tokens"].data)
    rng = np.random.default_rng(0)
    d2t = np.sort(rng.choice(n_target, 64, replace=False)).astype(np.int64)

    def mat(*s):
        return (rng.standard_normal(s) * 0.05).astype(np.float32)

    H, F = 64, 128
    std = os.path.join(workdir, "ckpt-standalone")
    os.makedirs(std)
    cfg = read_json(os.path.join(hf, "config.json"))
    cfg.update(vocab_size=64, num_hidden_layers=1)
    write_json(os.path.join(std, "config.json"), cfg)
    t = {"model.embed_tokens.weight": mat(64, H), "model.norm.weight": np.ones(H, np.float32),
         "lm_head.weight": mat(64, H)}
    kv = cfg["num_key_value_heads"] * (H // cfg["num_attention_heads"])
    for k, s in [("input_layernorm", (H,)), ("self_attn.q_proj", (H, H)), ("self_attn.k_proj", (kv, H)),
                 ("self_attn.v_proj", (kv, H)), ("self_attn.o_proj", (H, H)), ("post_attention_layernorm", (H,)),
                 ("mlp.gate_proj", (F, H)), ("mlp.up_proj", (F, H)), ("mlp.down_proj", (H, F))]:
        t[f"model.layers.0.{k}.weight"] = mat(*s)
    write_file(os.path.join(std, "model.safetensors"), safetensors_bytes(t))
    write_file(os.path.join(std, "draft_vocab.safetensors"),
               safetensors_bytes({"d2t": d2t, "unk_draft_id": np.array([0], np.int64)}))

    feat = os.path.join(workdir, "ckpt-feature")
    os.makedirs(feat)
    fcfg = dict(model_type="ppow_eagle3", hidden_size=H, target_hidden_size=H, target_layers=[0, 1, 1],
                target_vocab_size=n_target, draft_vocab_size=64, intermediate_size=F, num_attention_heads=2,
                num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=256)
    write_json(os.path.join(feat, "config.json"), fcfg)
    ft = {"fc.weight": mat(H, 3 * H), "norm.weight": np.ones(H, np.float32), "lm_head.weight": mat(64, H)}
    for k, s in [("input_layernorm", (H,)), ("hidden_norm", (H,)), ("self_attn.q_proj", (64, 2 * H)),
                 ("self_attn.k_proj", (64, 2 * H)), ("self_attn.v_proj", (64, 2 * H)), ("self_attn.o_proj", (H, 64)),
                 ("post_attention_layernorm", (H,)), ("mlp.gate_proj", (F, H)), ("mlp.up_proj", (F, H)),
                 ("mlp.down_proj", (H, F))]:
        ft[f"midlayer.{k}.weight"] = mat(*s)
    write_file(os.path.join(feat, "model.safetensors"), safetensors_bytes(ft))
    write_file(os.path.join(feat, "draft_vocab.safetensors"), safetensors_bytes({"d2t": d2t}))
    return {"hf": hf, "standalone": std, "feature": feat, "target": target_gguf, "n_target": n_target}


def test_converter_inputs_are_well_formed(ckpts, workdir):
    """The fuzzers' starting points convert (so the fuzzers explore near working inputs)."""
    from ppow_convert import convert_drafter, convert_hf

    convert_hf(ckpts["hf"], os.path.join(workdir, "ok-hf.gguf"), "f32")
    for kind in ("standalone", "feature"):
        convert_drafter(ckpts[kind], ckpts["target"], os.path.join(workdir, f"ok-{kind}.gguf"), "f32")


@pytest.mark.parametrize("kind", ["hf", "standalone", "feature"])
@FUZZ
@given(data=st.data())
def test_fuzz_convert_config(ckpts, workdir, kind, capped, data):
    from ppow_convert import convert_drafter, convert_hf

    src = ckpts[kind]
    d = fresh(workdir, f"cfg-{kind}")
    link_dir(src, d, replace=("config.json",))
    if data.draw(st.integers(0, 9)) == 0:
        text = data.draw(st.sampled_from(["", "{", "[]", "null", "1", '"x"', "{\"a\": NaN}", "\xff"]))
        write_file(os.path.join(d, "config.json"), text.encode("utf-8", "surrogateescape"))
    else:
        cfg = mutate_json(data.draw, read_json(os.path.join(src, "config.json")))
        write_json(os.path.join(d, "config.json"), cfg)
    out = os.path.join(workdir, f"cfg-{kind}.gguf")
    if kind == "hf":
        convert_clean(f"convert config.json ({kind})", convert_hf, d, out, "f32")
    else:
        convert_clean(f"convert config.json ({kind})", convert_drafter, d, ckpts["target"], out, "f32")


@st.composite
def safetensors_mutation(draw, raw):
    """A Case: a well-formed safetensors file with a broken header, or truncated."""
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    kind = draw(st.sampled_from(["entry", "entry", "length", "json", "truncate"]))
    if kind == "length":
        v = draw(st.sampled_from([0, 1, 2, n - 1, n + 1, len(raw), 2**32, 2**63, 2**64 - 1]))
        return Case(struct.pack("<Q", v) + raw[8:], f"header length {v}")
    if kind == "truncate":
        cut = draw(st.integers(0, len(raw) - 1))
        return Case(raw[:cut], f"truncated to {cut}")
    if kind == "json":
        text = draw(st.sampled_from(["", "[]", "null", "{", '{"a": 1}', '{"a": {"dtype": "F32"}}', "\xff\xfe"]))
        h = text.encode("utf-8", "surrogateescape")
        return Case(struct.pack("<Q", len(h)) + h + body, f"header {text!r}")
    name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "delete", "entry"]))
    if field == "delete":
        del header[name]
    elif field == "entry":
        header[name] = draw(JSON_VALUES)
    elif field == "dtype":
        header[name]["dtype"] = draw(st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL",
                                                      "F8_E4M3", "Q4", "", None, 3]))
    elif field == "shape":
        header[name]["shape"] = draw(st.one_of(st.lists(st.integers(-2, 200), max_size=4), JSON_VALUES))
    else:
        header[name]["data_offsets"] = draw(st.one_of(st.lists(st.integers(-10, 2**40), max_size=3), JSON_VALUES))
    h = json.dumps(header).encode()
    return Case(struct.pack("<Q", len(h)) + h + body, f"{name}.{field}")


@pytest.mark.parametrize("kind", ["hf", "feature"])
@FUZZ
@given(data=st.data())
def test_fuzz_convert_safetensors(ckpts, workdir, kind, capped, data):
    from ppow_convert import convert_drafter, convert_hf

    src = ckpts[kind]
    d = fresh(workdir, f"st-{kind}")
    link_dir(src, d, replace=("model.safetensors",))
    raw = data.draw(safetensors_mutation(read_file(os.path.join(src, "model.safetensors"))))
    write_file(os.path.join(d, "model.safetensors"), raw)
    out = os.path.join(workdir, f"st-{kind}.gguf")
    if kind == "hf":
        convert_clean("convert safetensors header (hf)", convert_hf, d, out, "f32")
    else:
        convert_clean("convert safetensors header (feature)", convert_drafter, d, ckpts["target"], out, "f32")


DTYPES = [np.int64, np.int32, np.int16, np.int8, np.uint8, np.float32, np.float64, np.bool_]


@st.composite
def draft_vocab_file(draw, n_target, n_draft=64):
    """(tensors, description) for draft_vocab.safetensors: d2t and unk_draft_id of any dtype, shape and value."""
    n = draw(st.sampled_from([n_draft, n_draft, 0, 1, n_draft - 1, n_draft + 1]))
    values = draw(st.one_of(
        st.just(list(range(n))),
        st.lists(st.sampled_from([-1, 0, 1, n_target - 1, n_target, 2**31 - 1, 2**40]), min_size=n, max_size=n),
        st.lists(st.integers(0, n_target - 1), min_size=n, max_size=n)))
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.sampled_from([(n,), (n,), (1, n), (n, 1)]))
    with np.errstate(all="ignore"):
        d2t = np.array(values, dtype=np.int64).astype(dtype).reshape(shape)
    tensors = {} if draw(st.integers(0, 9)) == 0 else {draw(st.sampled_from(["d2t", "d2t", "D2T"])): d2t}
    unk = draw(st.one_of(st.none(), st.sampled_from([[0], [5], [-1], [n_draft], [], [0, 1]])))
    if unk is not None:
        with np.errstate(all="ignore"):
            tensors["unk_draft_id"] = np.array(unk, dtype=np.int64).astype(draw(st.sampled_from(DTYPES)))
    return tensors, f"d2t {dtype.__name__}{list(shape)} {values[:4]}..., unk {unk}"


@pytest.mark.parametrize("kind", ["standalone", "feature"])
@FUZZ
@given(data=st.data())
def test_fuzz_convert_draft_vocab(ckpts, workdir, kind, capped, data):
    from ppow_convert import convert_drafter

    src = ckpts[kind]
    d = fresh(workdir, f"dv-{kind}")
    link_dir(src, d, replace=("draft_vocab.safetensors",))
    tensors = data.draw(draft_vocab_file(ckpts["n_target"]))[0]
    write_file(os.path.join(d, "draft_vocab.safetensors"), safetensors_bytes(tensors))
    convert_clean(f"convert draft vocabulary ({kind})", convert_drafter, d, ckpts["target"],
                  os.path.join(workdir, f"dv-{kind}.gguf"), "f32")


# ----------------------------------------------------------------------------- trainer caches and checkpoints

def load_clean(fuzzer, fn, *args):
    try:
        out = fn(*args)
        record(fuzzer, "loaded")
        return out
    except ValueError as e:
        record(fuzzer, f"ValueError: {e}")
        assert str(e)
    except Exception as e:  # noqa: BLE001 - the property: nothing but ValueError
        record(fuzzer, f"UNCLEAR {type(e).__name__}: {e}")
        raise AssertionError(f"{fuzzer}: {type(e).__name__} instead of ValueError: {e}") from e


CACHE_VOCAB = 100


def cache_tensors(rng, n_seq=3, K=4):
    seq_len = rng.integers(5, 12, n_seq)
    N = int(seq_len.sum())
    ids = rng.integers(0, CACHE_VOCAB, (N, K))
    probs = np.sort(rng.random((N, K)), axis=1)[:, ::-1] / K
    return {"tokens": rng.integers(0, CACHE_VOCAB, N).astype(np.int32), "greedy": ids[:, 0].astype(np.int32),
            "topk_ids": ids.astype(np.int32), "topk_probs": probs.astype(np.float16),
            "seq_len": seq_len.astype(np.int32), "prompt_len": np.minimum(seq_len, 3).astype(np.int32)}


@st.composite
def cache_mutation(draw, tensors, meta, side):
    t, meta, side = dict(tensors), json.loads(json.dumps(meta)), json.loads(json.dumps(side))
    kind = draw(st.sampled_from(["dtype", "shape", "values", "drop", "meta", "side"]))
    name = draw(st.sampled_from(sorted(t)))
    if kind == "dtype":
        with np.errstate(all="ignore"):
            t[name] = t[name].astype(draw(st.sampled_from(DTYPES + [np.float16])))
    elif kind == "shape":
        a = t[name]
        t[name] = draw(st.sampled_from([a.reshape(-1)[:-1], a.reshape(1, -1), a.reshape(-1)[:0], np.concatenate([a, a]),
                                        a[..., None], a.reshape(-1)]))
    elif kind == "values":
        a = t[name].copy()
        if a.size:
            v = draw(st.sampled_from([-1, 0, CACHE_VOCAB, 2**15 - 1, 10**6]))
            with np.errstate(all="ignore"):
                a.reshape(-1)[draw(st.integers(0, a.size - 1))] = np.array(v).astype(a.dtype)
        t[name] = a
    elif kind == "drop":
        del t[name]
    elif kind == "meta":
        meta = mutate_json(draw, meta)
        if draw(st.booleans()):
            meta["shards"] = draw(st.sampled_from([[], [{}], [{"file": "../x.safetensors"}], "x", None,
                                                   [{"file": "shard_00000.safetensors"}] * 2]))
    else:
        side = mutate_json(draw, side)
    return t, meta, side, f"{kind} {name}"


def write_cache(d, tensors, meta, side):
    from safetensors.numpy import save_file

    os.makedirs(d)
    write_json(os.path.join(d, "meta.json"), meta)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(d, "shard_00000.safetensors"))
    write_json(os.path.join(d, "shard_00000.json"), side)


@FUZZ
@given(data=st.data())
def test_fuzz_train_cache(workdir, capped, data):
    from ppow.train.cache import Cache

    t = cache_tensors(np.random.default_rng(data.draw(st.integers(0, 3))))
    S, N = len(t["seq_len"]), len(t["tokens"])
    meta = dict(version=1, complete=True, settings=dict(topk=4),
                target=dict(sha256="0" * 64, path=None, vocab_size=CACHE_VOCAB),
                shards=[dict(file="shard_00000.safetensors", sequences=S, positions=N)])
    side = dict(summary=meta["shards"][0], category=["all"] * S, id=[str(i) for i in range(S)])
    t, meta, side, _ = data.draw(cache_mutation(t, meta, side))
    d = fresh(workdir, "cache")
    write_cache(d, t, meta, side)
    cache = load_clean("train cache", Cache, d)
    if cache is not None:  # a cache that loads must also serve windows and contexts
        for s in cache.window_starts(3)[:5].tolist():
            cache.context(s, 8)
        cache.token_counts(CACHE_VOCAB)


@pytest.fixture(scope="module")
def train_ckpt(workdir):
    """A standalone drafter checkpoint (reduced draft vocabulary) with its trainer state."""
    import torch
    from ppow.train import model as M
    from ppow.train.checkpoint import save_checkpoint
    from ppow.train.vocab import DraftVocab

    torch.manual_seed(0)
    model = M.Drafter(M.make_config(vocab_size=16, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                    num_key_value_heads=2, max_position_embeddings=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 16, (1, 8)))[0].mean().backward()
    opt.step()
    d = os.path.join(workdir, "train-ckpt")
    save_checkpoint(d, model, DraftVocab(list(range(0, 32, 2)), 40), {"target_vocab_size": 40}, optimizer=opt, step=1)
    return d


@st.composite
def checkpoint_mutation(draw, d):
    """(file name, Case): one file of the checkpoint broken."""
    fname = draw(st.sampled_from(["config.json", "model.safetensors", "draft_vocab.safetensors",
                                  "trainer_state.safetensors", "trainer_state.json", "ppow_train.json"]))
    path = os.path.join(d, fname)
    if fname.endswith(".json"):
        return fname, Case(json.dumps(mutate_json(draw, read_json(path))).encode(), "values")
    if draw(st.integers(0, 4)) == 0:
        return fname, draw(safetensors_mutation(read_file(path)))
    import torch
    from safetensors.torch import load_file as tload
    t = {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in tload(path).items()}
    name = draw(st.sampled_from(sorted(t)))
    a = t[name]
    how = draw(st.sampled_from(["dtype", "shape", "drop", "extra", "value"]))
    if how == "dtype":
        with np.errstate(all="ignore"):
            t[name] = a.astype(draw(st.sampled_from([np.float16, np.float64, np.int64, np.int32, np.uint8, np.bool_])))
    elif how == "shape":
        t[name] = draw(st.sampled_from([a.reshape(-1), a.reshape(-1)[:-1] if a.size else a.reshape(-1), a[None],
                                        np.concatenate([a.reshape(-1), a.reshape(-1)])]))
    elif how == "drop":
        del t[name]
    elif how == "extra":
        t["unexpected.weight"] = np.zeros(3, np.float32)
    elif a.size:
        a = a.copy()
        v = draw(st.sampled_from([-1, 0, 40, 127] + ([2**31 - 1, float("nan")] if a.dtype.kind == "f" else [])))
        with np.errstate(all="ignore"):
            a.reshape(-1)[0] = np.array(v).astype(a.dtype)  # wraps for unsigned types
        t[name] = a
    return fname, Case(safetensors_bytes(t), f"{name} {how}")


@FUZZ
@given(data=st.data())
def test_fuzz_train_checkpoint(train_ckpt, workdir, capped, data):
    import torch
    from ppow.train.checkpoint import load_drafter, load_trainer_state

    fname, raw = data.draw(checkpoint_mutation(train_ckpt))
    d = fresh(workdir, "ckpt")
    link_dir(train_ckpt, d, replace=(fname,))
    write_file(os.path.join(d, fname), raw)
    out = load_clean("train checkpoint", load_drafter, d)
    if out is not None:
        model = out[0]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        if load_clean("train checkpoint (trainer state)", load_trainer_state, d, opt) is not None:
            model(torch.randint(0, model.cfg["vocab_size"], (1, 4)))[0].mean().backward()
            opt.step()  # restored optimizer state fits the parameters
