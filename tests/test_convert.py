"""ppow-convert: converted GGUFs must compute what the PyTorch model computes, tokenize like the
HF tokenizer, and bad input must fail with a specific one-line error and leave no file behind.

Tolerances (max |logit difference| vs the f32 PyTorch model, tiny target, logits up to ~11):
  f32  measured 3e-6  -> bound 1e-3
  f16  measured 4e-3  -> bound 2e-2
  q8_0 measured 9e-2  -> bound 3e-1
llama.cpp runs with an f32 KV cache here (type_k/type_v=0): the default f16 cache alone adds
~3e-3 to the f32 model's difference.
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
from safetensors.numpy import save_file
from transformers import AutoTokenizer, LlamaForCausalLM

import llama_cpp
import ppow
import tinymodels
from ppow_convert import cli, convert_drafter, convert_hf
from ppow_convert.safetensors_io import read_file
from ppow.gguf_keys import DRAFT_VOCAB_D2T as KEY_D2T
from ppow.gguf_keys import DRAFT_VOCAB_UNK as KEY_UNK
from ppow.gguf_keys import TARGET_N_VOCAB as KEY_TARGET_N_VOCAB

PROMPTS = ["The painter said", "Numbers are fun: 1, 2,", "def add(a, b):\n", "When the draft model is"]
TOKENIZE_STRINGS = ["The quick brown fox", "Hello  world!\n\n  x = 42 # 12345", "café 🦊 naïve ä",
                    " leading and trailing spaces  ", "tabs\tand\nnewlines\n", "it's we'll THEY'RE"]
TOL = {"f32": 1e-3, "f16": 2e-2, "q8_0": 3e-1}


def load(path, **kw):
    # Without the extra (repacked/AMX) CPU buffer types, as ppow loads models: llama.cpp 0.3.36's AMX
    # matmul crashed on these tiny q8_0 shapes on a Sapphire Rapids Xeon.
    from ppow.llamacpp_params import model_params

    with model_params(False):
        return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=256, n_threads=1, verbose=False,
                               type_k=0, type_v=0, **kw)


def gguf_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])


def gguf_greedy(llm, ids, n):
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


@torch.no_grad()
def torch_logits(model, ids):
    return model(input_ids=torch.tensor([ids])).logits[0].numpy()


@pytest.fixture(scope="module")
def hf_target(tiny_hf_dir):
    return AutoTokenizer.from_pretrained(tiny_hf_dir), LlamaForCausalLM.from_pretrained(tiny_hf_dir).eval()


# ----------------------------------------------------------------------------- numerics

@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_hf_logits_and_greedy_match_torch(outtype, tiny_hf_dir, tiny_target_gguf, hf_target, tmp_path):
    tok, model = hf_target
    path = tiny_target_gguf if outtype == "f32" else convert_hf(str(tiny_hf_dir), str(tmp_path / "t.gguf"), outtype)
    llm = load(path)
    assert llm.n_vocab() == model.config.vocab_size
    worst = 0.0
    for p in PROMPTS:
        ids = tok(p, add_special_tokens=False)["input_ids"]
        worst = max(worst, float(np.abs(gguf_logits(llm, ids) - torch_logits(model, ids)).max()))
    assert worst <= TOL[outtype], f"{outtype}: max |logit diff| {worst}"
    ids = tok(PROMPTS[0], add_special_tokens=False)["input_ids"]
    ref = tinymodels.greedy(model, ids, 20)
    assert len(set(ref)) > 3  # the tiny model continues the text, not one repeated token
    assert gguf_greedy(llm, ids, 20) == ref


def test_quantized_files_are_smaller_and_typed(tiny_hf_dir, tmp_path):
    types = {}
    for ot in ["f32", "f16", "q8_0"]:
        r = gguf.GGUFReader(convert_hf(str(tiny_hf_dir), str(tmp_path / f"{ot}.gguf"), ot))
        types[ot] = {t.name: t.tensor_type for t in r.tensors}
    Q = gguf.GGMLQuantizationType
    assert types["f32"]["blk.0.attn_q.weight"] == Q.F32
    assert types["f16"]["blk.0.attn_q.weight"] == Q.F16 and types["f16"]["blk.0.attn_norm.weight"] == Q.F32
    assert types["q8_0"]["blk.1.ffn_down.weight"] == Q.Q8_0 and types["q8_0"]["output_norm.weight"] == Q.F32
    sizes = [os.path.getsize(tmp_path / f"{ot}.gguf") for ot in ["f32", "f16", "q8_0"]]
    assert sizes[0] > sizes[1] > sizes[2]


def test_tied_embeddings(tmp_path, hf_target):
    tok, _ = hf_target
    model = tinymodels.build_model(tmp_path / "tied", tok, n_layer=1, steps=30, seed=3, tie=True)
    assert not any("lm_head" in k for k in read_file(tmp_path / "tied" / "model.safetensors"))
    path = convert_hf(str(tmp_path / "tied"), str(tmp_path / "tied.gguf"), "f32")
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(path).tensors}
    ids = tok(PROMPTS[1], add_special_tokens=False)["input_ids"]
    ref = torch_logits(model, ids)
    assert np.abs(ref).max() > 1.0  # trained enough that a wrong output matrix would show
    assert np.abs(gguf_logits(load(path), ids) - ref).max() <= TOL["f32"]


# ----------------------------------------------------------------------------- tokenizers

def test_bpe_tokenizer_round_trip(tiny_target_gguf, hf_target):
    tok, _ = hf_target
    r = gguf.GGUFReader(tiny_target_gguf)
    assert r.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert r.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    llm = llama_cpp.Llama(model_path=tiny_target_gguf, vocab_only=True, verbose=False)
    for s in TOKENIZE_STRINGS:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(s.encode(), add_bos=False, special=False) == ids, s
        assert llm.detokenize(ids).decode() == s


def test_sentencepiece_tokenizer_round_trip(tmp_path):
    pytest.importorskip("sentencepiece")
    sp = tinymodels.build_spm_model(tmp_path / "spm")
    path = convert_hf(str(tmp_path / "spm"), str(tmp_path / "spm.gguf"), "f32")
    r = gguf.GGUFReader(path)
    assert r.fields["tokenizer.ggml.model"].contents() == "llama"
    assert r.fields["tokenizer.ggml.scores"].contents(5) == pytest.approx(sp.GetScore(5))
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    # reference: sentencepiece itself (transformers 5 needs protobuf to read tokenizer.model)
    for s in TOKENIZE_STRINGS:
        assert llm.tokenize(s.encode(), add_bos=False, special=False) == sp.encode(s), s
    assert llm.tokenize(b"hi", add_bos=True)[0] == sp.bos_id() == 1


# ----------------------------------------------------------------------------- drafter

def test_drafter_copies_target_tokenizer(tiny_drafter_gguf, tiny_target_gguf, tiny_drafter_hf_dir, hf_target):
    tok, target = hf_target
    tgt, dr = gguf.GGUFReader(tiny_target_gguf), gguf.GGUFReader(tiny_drafter_gguf)
    tok_keys = sorted(k for k in tgt.fields if k.startswith("tokenizer."))
    assert sorted(k for k in dr.fields if k.startswith("tokenizer.")) == tok_keys
    for k in tok_keys:
        assert dr.fields[k].contents() == tgt.fields[k].contents(), k
    assert dr.fields[KEY_TARGET_N_VOCAB].contents() == 512
    assert dr.fields["llama.block_count"].contents() == 1
    drafter = LlamaForCausalLM.from_pretrained(tiny_drafter_hf_dir).eval()
    ids = tok(PROMPTS[3], add_special_tokens=False)["input_ids"]
    assert np.abs(gguf_logits(load(tiny_drafter_gguf), ids) - torch_logits(drafter, ids)).max() <= TOL["f32"]
    # the drafter is useful but imperfect: speculative tests need both acceptances and rejections
    stream = tinymodels.corpus_ids(tok, n_copies=1, seed=5)[:300].tolist()
    agree = (torch_logits(drafter, stream).argmax(-1) == torch_logits(target, stream).argmax(-1)).mean()
    assert 0.5 < agree < 0.97, agree


def test_reduced_vocab_drafter(tiny_drafter_hf_dir, tiny_target_gguf, tmp_path):
    d2t = np.arange(3, 512, 2)  # 255 of the target's 512 tokens
    tinymodels.make_reduced_drafter(tiny_drafter_hf_dir, tmp_path / "small", d2t, unk=4)
    path = convert_drafter(str(tmp_path / "small"), tiny_target_gguf, str(tmp_path / "small.gguf"), "f32")
    r = gguf.GGUFReader(path)
    assert r.fields[KEY_D2T].contents() == d2t.tolist()
    assert r.fields[KEY_UNK].contents() == 4
    assert r.fields[KEY_TARGET_N_VOCAB].contents() == 512
    assert r.fields["tokenizer.ggml.model"].contents() == "none"
    shapes = {t.name: list(t.shape) for t in r.tensors}
    assert shapes["output.weight"] == shapes["token_embd.weight"] == [64, len(d2t)]
    llm = load(path)
    assert llm.n_vocab() == len(d2t)
    model = LlamaForCausalLM.from_pretrained(tmp_path / "small").eval()
    draft_ids = [5, 17, 100, 200, 42, 7]  # the runtime feeds draft indices (target ids mapped through d2t^-1)
    logits = gguf_logits(llm, draft_ids)
    assert logits.shape == (len(draft_ids), len(d2t))
    assert np.abs(logits - torch_logits(model, draft_ids)).max() <= TOL["f32"]


# ----------------------------------------------------------------------------- bad input

def run_cli(capsys, *argv):
    capsys.readouterr()  # drop earlier output (e.g. progress bars)
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return rc, err


def assert_fails(capsys, out_dir, expected, *argv):
    before = sorted(os.listdir(out_dir))
    rc, err = run_cli(capsys, *argv)
    assert rc == 2
    assert err.startswith("ppow-convert: error: ") and "\n" not in err, err
    assert expected in err, err
    assert sorted(os.listdir(out_dir)) == before  # no output, no temp file


def test_error_unknown_architecture(tiny_hf_dir, tmp_path, capsys):
    shutil.copytree(tiny_hf_dir, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    assert_fails(capsys, tmp_path, "unsupported architecture 'GPT2LMHeadModel'", "hf", tmp_path / "m", "-o", tmp_path / "o.gguf")


def test_error_missing_tensor(tiny_hf_dir, tmp_path, capsys):
    shutil.copytree(tiny_hf_dir, tmp_path / "m")
    t = {k: np.array(v) for k, v in read_file(tmp_path / "m" / "model.safetensors").items()}
    del t["model.layers.1.mlp.up_proj.weight"]
    save_file(t, str(tmp_path / "m" / "model.safetensors"))
    assert_fails(capsys, tmp_path, "missing tensor 'model.layers.1.mlp.up_proj.weight'",
                 "hf", tmp_path / "m", "-o", tmp_path / "o.gguf")


def test_error_missing_config(tiny_hf_dir, tmp_path, capsys):
    shutil.copytree(tiny_hf_dir, tmp_path / "m")
    os.remove(tmp_path / "m" / "config.json")
    assert_fails(capsys, tmp_path, "missing config.json", "hf", tmp_path / "m", "-o", tmp_path / "o.gguf")


def test_error_pickle_only_checkpoint(tiny_hf_dir, tmp_path, capsys):
    shutil.copytree(tiny_hf_dir, tmp_path / "m")
    os.rename(tmp_path / "m" / "model.safetensors", tmp_path / "m" / "pytorch_model.bin")
    assert_fails(capsys, tmp_path, "only pickle weights (pytorch_model.bin)", "hf", tmp_path / "m", "-o", tmp_path / "o.gguf")


def test_error_vocab_size_mismatch(tiny_hf_dir, tiny_drafter_hf_dir, tmp_path, capsys):
    sp_dir = tmp_path / "spm"  # a target with a different (420-token) vocabulary
    tinymodels.build_spm_model(sp_dir)
    convert_hf(str(sp_dir), str(tmp_path / "spm.gguf"), "f32")
    assert_fails(capsys, tmp_path, "vocab size mismatch: drafter vocab_size=512 but the target tokenizer",
                 "drafter", tiny_drafter_hf_dir, "--tokenizer-from", tmp_path / "spm.gguf", "-o", tmp_path / "o.gguf")


def test_error_bad_d2t(tiny_drafter_hf_dir, tiny_target_gguf, tmp_path, capsys):
    tinymodels.make_reduced_drafter(tiny_drafter_hf_dir, tmp_path / "small", np.arange(4))
    save_file({"d2t": np.array([0, 1, 2, 999])}, str(tmp_path / "small" / "draft_vocab.safetensors"))
    assert_fails(capsys, tmp_path, "d2t has ids outside the target vocabulary [0, 512)",
                 "drafter", tmp_path / "small", "--tokenizer-from", tiny_target_gguf, "-o", tmp_path / "o.gguf")


def test_error_tokenizer_from_not_gguf(tiny_drafter_hf_dir, tmp_path, capsys):
    (tmp_path / "junk.gguf").write_bytes(b"this is not a gguf file at all" * 10)
    assert_fails(capsys, tmp_path, "junk.gguf is not a readable GGUF file",
                 "drafter", tiny_drafter_hf_dir, "--tokenizer-from", tmp_path / "junk.gguf", "-o", tmp_path / "o.gguf")
    assert_fails(capsys, tmp_path, "nothere.gguf: no such file",
                 "drafter", tiny_drafter_hf_dir, "--tokenizer-from", tmp_path / "nothere.gguf", "-o", tmp_path / "o.gguf")


def test_failed_write_leaves_nothing(tiny_hf_dir, tmp_path, monkeypatch):
    def boom(self, *a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(OSError, match="disk full"):
        convert_hf(str(tiny_hf_dir), str(tmp_path / "o.gguf"), "f32")
    assert os.listdir(tmp_path) == []


def test_cli_subprocess(tiny_hf_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "convert"),
                                                       os.environ.get("PYTHONPATH", "")]))
    ok = subprocess.run([sys.executable, "-m", "ppow_convert", "hf", str(tiny_hf_dir), "-o", str(tmp_path / "t.gguf"),
                         "--outtype", "q8_0"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert gguf.GGUFReader(tmp_path / "t.gguf").fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    bad = subprocess.run([sys.executable, "-m", "ppow_convert", "hf", str(tmp_path / "nope"), "-o", str(tmp_path / "x.gguf")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.strip() == f"ppow-convert: error: {tmp_path / 'nope'}: not a directory"
    assert sorted(os.listdir(tmp_path)) == ["t.gguf"]


# ----------------------------------------------------------------------------- real target

@pytest.mark.real
def test_drafter_with_gemma_tokenizer(gemma_gguf, tmp_path):
    """A (random, 1-layer) drafter with Gemma 3's 262k vocab gets Gemma's tokenizer verbatim."""
    n_vocab, H = 262144, 64
    d = tmp_path / "gdraft"
    d.mkdir()
    cfg = tinymodels.llama_config(n_vocab, n_layer=1, tie=True).to_dict()
    cfg["architectures"] = ["LlamaForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    shapes = {"model.embed_tokens.weight": (n_vocab, H), "model.norm.weight": (H,)}
    for k, s in {"input_layernorm": (H,), "post_attention_layernorm": (H,), "self_attn.q_proj": (64, H),
                 "self_attn.k_proj": (32, H), "self_attn.v_proj": (32, H), "self_attn.o_proj": (H, 64),
                 "mlp.gate_proj": (128, H), "mlp.up_proj": (128, H), "mlp.down_proj": (H, 128)}.items():
        shapes[f"model.layers.0.{k}.weight"] = s
    save_file({k: rng.standard_normal(s).astype(np.float32) * 0.1 for k, s in shapes.items()}, str(d / "model.safetensors"))
    path = convert_drafter(str(d), str(gemma_gguf), str(tmp_path / "gdraft.gguf"), "f16")
    target = llama_cpp.Llama(model_path=str(gemma_gguf), vocab_only=True, verbose=False)
    drafter = llama_cpp.Llama(model_path=path, n_ctx=64, n_threads=1, verbose=False)
    assert drafter.n_vocab() == target.n_vocab() == n_vocab
    for s in TOKENIZE_STRINGS + ["<start_of_turn>user\nhi<end_of_turn>"]:
        for special in (False, True):
            ids = target.tokenize(s.encode(), add_bos=True, special=special)
            assert drafter.tokenize(s.encode(), add_bos=True, special=special) == ids
            assert drafter.detokenize(ids) == target.detokenize(ids)


def test_cli_takes_a_shipped_target_by_name(gemma_gguf, tmp_path, capsys):
    """`--target gemma3-270m` means the packaged GGUF, as in ppow-train; an unknown name stays a missing file."""
    from ppow_convert.cli import main

    drafter = os.path.join(os.path.dirname(ppow.__file__), "drafters", "gemma3-270m-kd.gguf")
    assert main(["drafter", drafter, "--to", "hf", "--target", "gemma3-270m", "--embed-tokens",
                 "-o", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert main(["drafter", drafter, "--to", "hf", "--target", "no-such-target", "--embed-tokens",
                 "-o", str(tmp_path / "hf2")]) == 2
    assert "no-such-target" in capsys.readouterr().err and not (tmp_path / "hf2").exists()
