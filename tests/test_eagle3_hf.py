"""EAGLE-3 interop: ppow's feature drafters in and out of the Hugging Face EAGLE-3 layout (vLLM, SGLang,
SpecForge, the EAGLE authors, llama.cpp's convert_hf_to_gguf.py).

- export then import gives back the same weights, config and draft vocabulary (a trainer checkpoint
  exactly; an eagle3 GGUF bitwise, q8_0 included), and the engine drafts the same tokens and logits
  with the re-imported GGUF;
- the export computes what ppow's drafter computes when read with the HF layout's own conventions
  (rotate-half RoPE, d2t offsets, t2d mask: an independent NumPy transcription below);
- public layouts (SpecForge's midlayer.* with eagle_config and embed_tokens in bf16; speculators'
  Eagle3Speculator, nested config, layers.0.*, sharded) import;
- ppow-train starts from an HF EAGLE-3 dir (--init DIR);
- every refusal is one line and leaves no file;
- llama.cpp's own converter, run on the export, writes the tensors ppow writes (skipped without the
  llama.cpp source: set PPOW_LLAMA_CPP_SRC).
Tiny random drafters on the tiny target (hidden 64, 512 tokens, 2 layers): seconds.
"""
import json
import os
import shutil
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch

import ppow
import tinymodels
from ppow.train import checkpoint as C
from ppow.train import feature_model as FM
from ppow.train.vocab import DraftVocab, IdentityVocab
from ppow_convert import cli as convert_cli
from ppow_convert import ConvertError, convert_drafter
from ppow_convert.hf_eagle3 import export_hf_eagle3, import_hf_eagle3, read_hf_eagle3
from ppow_convert.safetensors_io import read_dir, read_file, write_file
from ppow_convert.target_info import TargetInfo

LAYERS = [0, 1, 1]
VARIANTS = {
    "reduced": dict(num_attention_heads=2, num_key_value_heads=1, intermediate_size=96, draft=128),
    "full-normed": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=12, intermediate_size=80,
                        norm_before_fc=True, norm_before_residual=True, draft=None),
}


def make_ckpt(path, target_gguf, variant, seed=0):
    """A trainer checkpoint of a feature drafter with random weights (norms too, so that a swapped
    norm shows)."""
    v = dict(VARIANTS[variant])
    n_draft = v.pop("draft")
    rng = np.random.default_rng(seed)
    d2t = None if n_draft is None else np.sort(rng.choice(512, size=n_draft, replace=False))
    cfg = FM.make_config(hidden_size=64, target_hidden_size=64, target_layers=LAYERS, target_vocab_size=512,
                         draft_vocab_size=n_draft, **v)
    model = FM.FeatureDrafter(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32))
            p.copy_(1 + 0.2 * noise if p.dim() == 1 else 0.15 * noise)
    vocab = IdentityVocab(512) if d2t is None else DraftVocab(d2t, 512)
    C.save_checkpoint(str(path), model, vocab, dict(stage="kd", drafter_kind="feature", target_vocab_size=512))
    return str(path)


@pytest.fixture(scope="module", params=list(VARIANTS))
def ckpt(request, tiny_target_gguf, tmp_path_factory):
    return make_ckpt(tmp_path_factory.mktemp("ck") / request.param, tiny_target_gguf, request.param)


@pytest.fixture(scope="module")
def target(tiny_target_gguf):
    return TargetInfo.from_gguf(tiny_target_gguf)


def gguf_tensors(path):
    return {t.name: (t.tensor_type, np.asarray(t.data)) for t in gguf.GGUFReader(path).tensors}


def gguf_kv(path):
    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()
            if not k.startswith("GGUF.") and k != "general.name"}


def same_gguf(a, b):
    ta, tb = gguf_tensors(a), gguf_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k][0] == tb[k][0] and np.array_equal(ta[k][1], tb[k][1]), k
    assert gguf_kv(a) == gguf_kv(b)


# ------------------------------------------------------------------------------------------ round trips

def test_checkpoint_round_trip(ckpt, target, tmp_path):
    hf = export_hf_eagle3(ckpt, str(tmp_path / "hf"))
    back = read_hf_eagle3(hf, target)
    sd = read_file(os.path.join(ckpt, "model.safetensors"))
    assert back.tensors.keys() == sd.keys()
    for k in sd:
        assert np.array_equal(back.tensors[k], sd[k]), k
    cfg = json.loads(open(os.path.join(ckpt, "config.json")).read())
    for k, v in back.cfg.items():
        assert cfg[k] == v, k
    want = C.load_drafter(ckpt, target=FM.read_target(target.where))[1].d2t
    assert (back.d2t is None and want is None) or np.array_equal(back.d2t, want.numpy())
    # the GGUF made from the import is the GGUF made from the checkpoint (name aside)
    for outtype, fc in (("f32", "f32"), ("q8_0", "q8_0")):
        a = convert_drafter(ckpt, target.where, str(tmp_path / f"a-{outtype}.gguf"), outtype, fc)
        b = import_hf_eagle3(hf, target.where, str(tmp_path / f"b-{outtype}.gguf"), outtype, fc)
        same_gguf(a, b)


def test_gguf_round_trip_drafts_the_same(tiny_target_gguf, tmp_path):
    """A quantized eagle3 GGUF (like the shipped ones) -> HF (f32) -> GGUF: bitwise the same file, and
    the engine drafts the same tokens with the same logits."""
    ck = make_ckpt(tmp_path / "ck", tiny_target_gguf, "reduced", seed=1)
    src = convert_drafter(ck, tiny_target_gguf, str(tmp_path / "src.gguf"), "q8_0", "q8_0")
    assert convert_cli.main(["drafter", src, "--to", "hf", "-o", str(tmp_path / "hf")]) == 0
    assert convert_cli.main(["eagle3-hf", str(tmp_path / "hf"), "--target", tiny_target_gguf, "-o",
                             str(tmp_path / "back.gguf"), "--outtype", "q8_0", "--fc-type", "q8_0"]) == 0
    same_gguf(src, str(tmp_path / "back.gguf"))
    texts = ["The quick brown fox", "def add(a, b):", "Once upon a time there was a little robot"]
    with ppow.Generator(tiny_target_gguf, src, n_ctx=256, n_threads=1) as a, \
            ppow.Generator(tiny_target_gguf, str(tmp_path / "back.gguf"), n_ctx=256, n_threads=1) as b:
        for text in texts:
            toks = a.tokenize(text)
            ta, la = a.draft_window(toks, 4)
            tb, lb = b.draft_window(toks, 4)
            assert ta == tb and np.array_equal(la, lb), text
            ga = a.generate(text, n_predict=24, ignore_eos=True, draft_max=4)
            gb = b.generate(text, n_predict=24, ignore_eos=True, draft_max=4)
            assert ga.tokens == gb.tokens and ga.stats.n_accepted == gb.stats.n_accepted


# ------------------------------------------------------------------------------------------ the HF math

def hf_eagle3_numpy(sd, cfg, embed, feats, tokens, k):
    """The HF EAGLE-3 drafter (SpecForge / vLLM llama_eagle3) in NumPy float64, from its published
    conventions: rotate-half RoPE on q/k, embedding first in the concat, residual from the raw fc
    state (hidden_norm'd with norm_before_residual), target id = i + d2t[i]. Entry p = (tokens[p+1],
    fc(feats[p])); then k greedy steps on the drafter's own prenorm states. Returns the logits of
    entry T-1 and of the k draft entries, scattered into the target vocabulary (-inf elsewhere)."""
    w = {n: np.asarray(v, dtype=np.float64) for n, v in sd.items()}
    eps, nh, nkv = cfg["rms_norm_eps"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["head_dim"]
    rms = lambda x, g: x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g  # noqa: E731
    f = np.asarray(feats, dtype=np.float64)
    if cfg["norm_before_fc"]:
        f = rms(f, w["input_norm.weight"])
    g = f @ w["fc.weight"].T
    offsets = sd.get("d2t")
    n_draft = w["lm_head.weight"].shape[0]
    ids = np.arange(n_draft) + (0 if offsets is None else np.asarray(offsets))
    toks, states = list(tokens[1:]), list(g)
    out = []

    def rope(x, pos):
        inv = cfg["rope_theta"] ** (-np.arange(0, hd, 2) / hd)
        ang = np.concatenate([pos[:, None] * inv] * 2, -1)[:, None, :]
        rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * np.cos(ang) + rot * np.sin(ang)

    for step in range(k + 1):
        T = len(toks)
        s = np.stack(states)
        sn = rms(s, w["midlayer.hidden_norm.weight"])
        x = np.concatenate([rms(np.asarray(embed, np.float64)[toks], w["midlayer.input_layernorm.weight"]), sn], -1)
        pos = np.arange(T, dtype=np.float64)
        q = rope((x @ w["midlayer.self_attn.q_proj.weight"].T).reshape(T, nh, hd), pos)
        kk = rope((x @ w["midlayer.self_attn.k_proj.weight"].T).reshape(T, nkv, hd), pos)
        v = (x @ w["midlayer.self_attn.v_proj.weight"].T).reshape(T, nkv, hd)
        att = np.zeros((T, nh, hd))
        for h in range(nh):
            kv = h // (nh // nkv)  # repeat_kv: consecutive query heads share a kv head
            sc = q[:, h] @ kk[:, kv].T / np.sqrt(hd) + np.triu(np.full((T, T), -np.inf), 1)
            pr = np.exp(sc - sc.max(-1, keepdims=True))
            att[:, h] = pr / pr.sum(-1, keepdims=True) @ v[:, kv]
        h1 = att.reshape(T, nh * hd) @ w["midlayer.self_attn.o_proj.weight"].T + (sn if cfg["norm_before_residual"] else s)
        n = rms(h1, w["midlayer.post_attention_layernorm.weight"])
        gate = n @ w["midlayer.mlp.gate_proj.weight"].T
        h2 = h1 + (gate / (1 + np.exp(-gate)) * (n @ w["midlayer.mlp.up_proj.weight"].T)) @ w["midlayer.mlp.down_proj.weight"].T
        logits = rms(h2[-1], w["norm.weight"]) @ w["lm_head.weight"].T
        full = np.full(cfg["vocab_size"], -np.inf)
        full[ids] = logits
        out.append(full)
        toks.append(int(ids[np.argmax(logits)]))
        states.append(h2[-1])
    return np.stack(out)


def test_export_computes_the_drafter_under_hf_conventions(ckpt, tiny_target_gguf, tmp_path):
    from transformers import AutoConfig

    hf = export_hf_eagle3(ckpt, str(tmp_path / "hf"))
    cfg = json.loads(open(os.path.join(hf, "config.json")).read())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["eagle_aux_hidden_state_layer_ids"] == LAYERS
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == LAYERS and cfg["vocab_size"] == 512
    hf_cfg = AutoConfig.from_pretrained(hf)  # what vLLM and SGLang parse it with
    assert hf_cfg.model_type == "llama" and hf_cfg.draft_vocab_size == cfg["draft_vocab_size"]
    sd = read_file(os.path.join(hf, "model.safetensors"))
    if "d2t" in sd:
        absolute = np.arange(len(sd["d2t"])) + sd["d2t"]
        assert sd["t2d"].dtype == np.bool_ and np.array_equal(np.flatnonzero(sd["t2d"]), np.sort(absolute))
    target = FM.read_target(tiny_target_gguf)
    model, _, _ = C.load_drafter(ckpt, target=target)
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((9, 192)).astype(np.float32) * 3
    tokens = rng.integers(0, 512, size=10)
    ref = FM.reference_draft_logits(model, torch.from_numpy(feats), torch.from_numpy(tokens), k=3, full_vocab=True)
    want = torch.cat([ref["logits"][-1:], ref["draft_logits"]]).double().numpy()
    got = hf_eagle3_numpy(sd, cfg, target["embed"].numpy(), feats, tokens, 3)
    assert np.array_equal(np.isfinite(got), np.isfinite(want))
    fin = np.isfinite(want)
    assert np.abs(got[fin] - want[fin]).max() < 1e-4 * max(1.0, np.abs(want[fin]).max())


# ------------------------------------------------------------------------------------------ public layouts

def public_layout(hf, out, style, target):
    """Rewrite ppow's export as SpecForge (bf16, embed_tokens, ids in eagle_config only) or speculators
    (Eagle3Speculator, transformer_layer_config, layers.0.*, two shards and an index) writes it."""
    cfg = json.loads(open(os.path.join(hf, "config.json")).read())
    sd = read_file(os.path.join(hf, "model.safetensors"))
    os.makedirs(out)
    dt = {k: ("I64" if k == "d2t" else "BOOL" if k == "t2d" else "BF16") for k in sd}
    tensors = {k: (dt[k], np.asarray(v)) for k, v in sd.items()}
    if style == "specforge":
        del cfg["eagle_aux_hidden_state_layer_ids"]
        cfg["torch_dtype"] = "bfloat16"
        tensors["embed_tokens.weight"] = ("BF16", target.embed_rows(np.arange(512)))
        write_file(os.path.join(out, "model.safetensors"), tensors)
    else:
        layer_keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                      "num_hidden_layers", "hidden_act", "rms_norm_eps", "rope_theta", "max_position_embeddings",
                      "vocab_size")
        cfg = {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
               "transformer_layer_config": {"model_type": "llama", **{k: cfg[k] for k in layer_keys}},
               **{k: cfg[k] for k in ("draft_vocab_size", "target_hidden_size", "norm_before_residual",
                                      "norm_before_fc", "eagle_aux_hidden_state_layer_ids")},
               "speculators_config": {"algorithm": "eagle3", "verifier": {"name_or_path": "tiny"}}}
        tensors = {k.replace("midlayer.", "layers.0."): v for k, v in tensors.items()}
        names = sorted(tensors)
        shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        for f, keys in shards.items():
            write_file(os.path.join(out, f), {k: tensors[k] for k in keys})
        index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as fh:
            json.dump(index, fh)
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    return out


@pytest.mark.parametrize("style", ["specforge", "speculators"])
def test_public_layouts_import(ckpt, target, tiny_target_gguf, tmp_path, style):
    hf = export_hf_eagle3(ckpt, str(tmp_path / "hf"))
    pub = public_layout(hf, str(tmp_path / style), style, target)
    back = read_hf_eagle3(pub, target)
    sd = read_file(os.path.join(ckpt, "model.safetensors"))
    for k, v in sd.items():  # the bf16 values of the weights (rounded once, by the export above)
        want = torch.from_numpy(np.array(v)).bfloat16().float().numpy()
        assert np.array_equal(back.tensors[k], want), k
    assert back.cfg["target_layers"] == LAYERS
    out = import_hf_eagle3(pub, tiny_target_gguf, str(tmp_path / "d.gguf"), "f16")
    with ppow.Generator(tiny_target_gguf, out, n_ctx=128, n_threads=1) as g:
        assert g.drafter_kind == "feature"
        assert len(g.draft_window(g.tokenize("The quick brown fox"), 3)[0]) == 3


# ------------------------------------------------------------------------------------------ ppow-train --init

def test_trainer_starts_from_an_hf_eagle3_dir(tiny_target_gguf, tmp_path):
    from ppow.train import cli
    from ppow.train.datagen import build_engine_cache

    ck = make_ckpt(tmp_path / "ck", tiny_target_gguf, "reduced", seed=2)
    hf = export_hf_eagle3(ck, str(tmp_path / "hf"))
    assert C.drafter_kind(hf) == "feature"
    with pytest.raises(ValueError, match="pass the target GGUF"):
        C.load_drafter(hf)
    model, vocab, info = C.load_drafter(hf, target=tiny_target_gguf)
    orig, ovocab, _ = C.load_drafter(ck, target=tiny_target_gguf)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), orig.state_dict().values()))
    assert torch.equal(vocab.d2t, ovocab.d2t) and info["init_from"] == "hf-eagle3"
    prompts = [{"text": t, "category": "c", "id": str(i)} for i, t in
               enumerate(["The quick brown fox", "def add(a, b):", "Once upon a time", "The river was blue"])]
    build_engine_cache(tiny_target_gguf, str(tmp_path / "cache"), prompts, max_new=12, topk=4, layers=LAYERS,
                       n_parallel=4, threads=1, progress=False)
    cli.run(["kd", "--cache", str(tmp_path / "cache"), "--target", tiny_target_gguf, "--init", hf, "--steps", "2",
             "--batch-size", "2", "--threads", "1", "--quiet", "-o", str(tmp_path / "kd")])
    trained, tvocab, tinfo = C.load_drafter(str(tmp_path / "kd" / "final"), target=tiny_target_gguf)
    assert torch.equal(tvocab.d2t, vocab.d2t) and trained.cfg["target_layers"] == LAYERS
    assert not torch.equal(trained.fc.weight, model.fc.weight)  # it trained from the imported weights
    convert_drafter(str(tmp_path / "kd" / "final"), tiny_target_gguf, str(tmp_path / "t.gguf"), "f16")


# ------------------------------------------------------------------------------------------ refusals

def _edit(hf, config=None, tensors=None):
    """Change an exported dir: config(cfg) and tensors(sd) edit in place."""
    path = os.path.join(hf, "config.json")
    cfg = json.loads(open(path).read())
    if config:
        config(cfg)
    with open(path, "w") as f:
        json.dump(cfg, f)
    if tensors:
        sd = {k: np.array(v) for k, v in read_file(os.path.join(hf, "model.safetensors")).items()}
        tensors(sd)
        write_file(os.path.join(hf, "model.safetensors"),
                   {k: ("I64" if v.dtype.kind == "i" else "BOOL" if v.dtype == np.bool_ else "F32", v) for k, v in sd.items()})


def _pickle(hf):
    os.remove(os.path.join(hf, "model.safetensors"))
    with open(os.path.join(hf, "pytorch_model.bin"), "wb") as f:
        f.write(b"\x80\x04")


REFUSALS = {
    "architecture": (lambda hf, t: _edit(hf, config=lambda c: c.update(architectures=["Qwen3ForCausalLM"])),
                     "unsupported architecture 'Qwen3ForCausalLM'"),
    "hidden": (lambda hf, t: _edit(hf, config=lambda c: c.update(target_hidden_size=128)), "features of width 128"),
    "vocab": (lambda hf, t: _edit(hf, config=lambda c: c.update(vocab_size=1000)), "vocabulary of 1000 tokens"),
    "layers": (lambda hf, t: _edit(hf, config=lambda c: c.update(eagle_aux_hidden_state_layer_ids=[0, 1, 5])),
               "auxiliary layers [0, 1, 5]"),
    "default-layers": (lambda hf, t: _edit(hf, config=lambda c: [c.pop("eagle_aux_hidden_state_layer_ids"),
                                                                  c.pop("eagle_config")]),
                       "auxiliary layers [2, 1, -1]"),
    "two-layers": (lambda hf, t: _edit(hf, config=lambda c: c.update(num_hidden_layers=2)), "2 decoder layers"),
    "rope-scaling": (lambda hf, t: _edit(hf, config=lambda c: c.update(rope_scaling={"rope_type": "llama3", "factor": 8})),
                     "RoPE scaling"),
    "missing": (lambda hf, t: _edit(hf, tensors=lambda sd: sd.pop("midlayer.mlp.up_proj.weight")),
                "missing tensor 'midlayer.mlp.up_proj.weight'"),
    "shape": (lambda hf, t: _edit(hf, tensors=lambda sd: sd.update({"fc.weight": sd["fc.weight"][:, :100].copy()})),
              "'fc.weight' has shape"),
    "absolute-d2t": (lambda hf, t: _edit(hf, tensors=lambda sd: sd.update(d2t=sd["d2t"] + np.arange(len(sd["d2t"])))),
                     "looks like absolute target ids"),
    "t2d": (lambda hf, t: _edit(hf, tensors=lambda sd: sd["t2d"].__setitem__(np.flatnonzero(~sd["t2d"])[0], True)),
            "t2d disagrees with d2t"),
    "no-d2t": (lambda hf, t: _edit(hf, tensors=lambda sd: [sd.pop("d2t"), sd.pop("t2d")]), "missing tensor 'd2t'"),
    "own-embed": (lambda hf, t: _edit(hf, tensors=lambda sd: sd.update({"embed_tokens.weight": np.random.default_rng(0)
                                                                      .standard_normal((512, 64)).astype(np.float32)})),
                  "is not the target's token embedding"),
    "nan": (lambda hf, t: _edit(hf, tensors=lambda sd: sd["lm_head.weight"].__setitem__((0, 0), np.nan)), "NaN"),
    "pickle": (lambda hf, t: _pickle(hf), "only pickle weights (pytorch_model.bin)"),
}


@pytest.fixture(scope="module")
def reduced_hf(tiny_target_gguf, tmp_path_factory):
    d = tmp_path_factory.mktemp("hfsrc")
    return export_hf_eagle3(make_ckpt(d / "ck", tiny_target_gguf, "reduced"), str(d / "hf"))


def assert_refused(capsys, out_dir, argv, expected):
    before = sorted(os.listdir(out_dir))
    capsys.readouterr()
    assert convert_cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ppow-convert: error: ") and "\n" not in err, err
    assert expected in err, err
    assert sorted(os.listdir(out_dir)) == before  # no output, no temp file


@pytest.mark.parametrize("what", list(REFUSALS))
def test_import_refusals(what, reduced_hf, tiny_target_gguf, tmp_path, capsys):
    hf = shutil.copytree(reduced_hf, tmp_path / "hf")
    mutate, expected = REFUSALS[what]
    mutate(str(hf), tiny_target_gguf)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(capsys, out, ["eagle3-hf", hf, "--target", tiny_target_gguf, "-o", out / "d.gguf"], expected)


def test_import_accepts_the_targets_own_embedding_and_output_layer_ids(reduced_hf, target, tiny_target_gguf, tmp_path):
    hf = shutil.copytree(reduced_hf, tmp_path / "hf")
    _edit(str(hf), config=lambda c: [c.update(eagle_aux_hidden_state_layer_ids=[-1, 0, 0]), c.pop("eagle_config")],
          tensors=lambda sd: sd.update({"embed_tokens.weight": target.embed_rows(np.arange(512)) * 0.5}))
    assert read_hf_eagle3(str(hf), target, layer_ids="outputs").cfg["target_layers"] == LAYERS
    with pytest.raises(ConvertError, match=r"auxiliary layers \[-1, 0, 0\]"):
        read_hf_eagle3(str(hf), target)


def test_export_refusals(tiny_drafter_hf_dir, reduced_hf, tiny_target_gguf, tmp_path, capsys):
    src = os.path.dirname(reduced_hf) + "/ck"
    out = tmp_path / "o"
    out.mkdir()
    assert_refused(capsys, out, ["drafter", tiny_drafter_hf_dir, "--to", "hf", "-o", out / "hf"],
                   "not a feature drafter checkpoint")
    assert_refused(capsys, out, ["drafter", src, "--to", "hf", "--embed-tokens", "-o", out / "hf"], "pass --target")
    assert_refused(capsys, out, ["drafter", tiny_target_gguf, "--to", "hf", "-o", out / "hf"],
                   "a 'llama' GGUF, not an eagle3 feature drafter")
    with pytest.raises(SystemExit) as e:  # a GGUF needs its target; argparse's usage error
        convert_cli.main(["drafter", src, "-o", str(out / "d.gguf")])
    assert e.value.code == 2 and "--target" in capsys.readouterr().err
    (out / "full").mkdir()
    (out / "full" / "x").write_text("x")
    assert_refused(capsys, out, ["drafter", src, "--to", "hf", "-o", out / "full"], "is not an empty directory")
    assert sorted(os.listdir(out / "full")) == ["x"]


def test_export_with_embed_tokens(reduced_hf, target, tiny_target_gguf, tmp_path):
    src = os.path.dirname(reduced_hf) + "/ck"
    hf = export_hf_eagle3(src, str(tmp_path / "hf"), dtype="bf16", target_gguf=tiny_target_gguf, embed_tokens=True)
    sd = read_file(os.path.join(hf, "model.safetensors"))
    want = torch.from_numpy(target.embed_rows(np.arange(512))).bfloat16().float().numpy()
    assert np.array_equal(sd["embed_tokens.weight"], want)
    assert json.loads(open(os.path.join(hf, "config.json")).read())["torch_dtype"] == "bfloat16"
    read_hf_eagle3(hf, target)  # its own embed_tokens is the target's: accepted


# ------------------------------------------------------------------------------------------ llama.cpp's converter

def llama_cpp_converter():
    src = os.environ.get("PPOW_LLAMA_CPP_SRC")
    if not src:
        pytest.skip("PPOW_LLAMA_CPP_SRC is not set: the llama.cpp source with convert_hf_to_gguf.py (e.g. the "
                    "unpacked llama-cpp-python 0.3.36 sdist's vendor/llama.cpp); CI cannot fetch it")
    for p in (os.path.join(src, "convert_hf_to_gguf.py"), os.path.join(src, "vendor", "llama.cpp", "convert_hf_to_gguf.py")):
        if os.path.isfile(p):
            return p
    pytest.skip(f"no convert_hf_to_gguf.py in PPOW_LLAMA_CPP_SRC={src}")


def test_llama_cpp_converter_writes_what_ppow_writes(tiny_hf_dir, tiny_target_gguf, tmp_path):
    """llama.cpp's convert_hf_to_gguf.py on ppow's export: the same tensors as ppow's own eagle3 GGUF
    (d2t offsets, q/k permutation, layer ids, norms all read as ppow means them), and the engine
    drafts the same with either file."""
    script = llama_cpp_converter()
    ck = make_ckpt(tmp_path / "ck", tiny_target_gguf, "reduced", seed=3)
    ours = convert_drafter(ck, tiny_target_gguf, str(tmp_path / "ours.gguf"), "f32")
    hf = export_hf_eagle3(ck, str(tmp_path / "hf"))
    # The target dir the converter reads: the tiny target's config.json and a tokenizer. It copies the
    # target's tokenizer into the drafter, which ppow's runtime does not read; a SentencePiece stand-in
    # spares the tiny byte-level BPE llama.cpp's table of known pre-tokenizers (it refuses unknown ones).
    tdir = tmp_path / "target"
    tdir.mkdir()
    shutil.copy(tiny_hf_dir / "config.json", tdir / "config.json")
    tinymodels.train_spm_tokenizer(tdir)
    r = subprocess.run([sys.executable, script, hf, "--target-model-dir", str(tdir), "--outfile",
                        str(tmp_path / "theirs.gguf"), "--outtype", "f32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    ta, tb = gguf_tensors(ours), gguf_tensors(str(tmp_path / "theirs.gguf"))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k][0] == tb[k][0] and np.array_equal(ta[k][1], tb[k][1]), k
    kb = gguf_kv(str(tmp_path / "theirs.gguf"))
    for k, v in gguf_kv(ours).items():
        if k.startswith("eagle3.") and k in kb:
            assert kb[k] == v, k
    with ppow.Generator(tiny_target_gguf, ours, n_ctx=128, n_threads=1) as a, \
            ppow.Generator(tiny_target_gguf, str(tmp_path / "theirs.gguf"), n_ctx=128, n_threads=1) as b:
        toks = a.tokenize("The quick brown fox")
        ta_, la = a.draft_window(toks, 4)
        tb_, lb = b.draft_window(toks, 4)
        assert ta_ == tb_ and np.array_equal(la, lb)
