"""Bad input raises a clear Python exception; nothing crashes the process."""
import subprocess
import sys
import threading

import pytest

import ppow
from ppow import PpowError


def test_missing_file(tmp_path):
    with pytest.raises(PpowError, match="not found"):
        ppow.Generator(str(tmp_path / "nope.gguf"))


def test_not_gguf(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_text("this is not a model")
    with pytest.raises(PpowError, match="not a GGUF file"):
        ppow.Generator(str(p))


def test_corrupt_gguf(tmp_path, tiny_target_gguf):
    data = open(tiny_target_gguf, "rb").read()
    p = tmp_path / "truncated.gguf"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(PpowError, match="failed to load model"):
        ppow.Generator(str(p))
    q = tmp_path / "garbage.gguf"
    q.write_bytes(b"GGUF" + b"\xff" * 200)
    with pytest.raises(PpowError, match="failed to load model"):
        ppow.Generator(str(q))


@pytest.mark.real
def test_vocab_mismatch(tiny_target_gguf):
    with pytest.raises(PpowError, match="vocabulary .* does not match"):
        ppow.Generator(tiny_target_gguf, ppow.default_target(), n_ctx=64)


@pytest.fixture(scope="module")
def gen(tiny_target_gguf, tiny_drafter_gguf):
    with ppow.Generator(tiny_target_gguf, tiny_drafter_gguf, n_ctx=32) as g:
        yield g


def test_prompt_longer_than_context(gen):
    with pytest.raises(PpowError, match="the prompt has 40 tokens but the context holds 32"):
        gen.generate([1] * 40)


@pytest.mark.parametrize("kw,msg", [
    (dict(draft_max=-1), "draft_max"), (dict(temp=-0.5), "temperature"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"), (dict(n_predict=-3), "n_predict"), (dict(top_k=-1), "top_k"),
    (dict(draft_p_min=2.0), "draft_p_min"), (dict(draft_policy="sometimes"), "draft_policy"),
    (dict(draft_min=5, draft_max=2), "draft_min"), (dict(temp=float("nan")), "temperature"),
])
def test_bad_parameters(gen, kw, msg):
    with pytest.raises(ValueError, match=msg):
        gen.generate("hello", **kw)


def test_bad_token_ids(gen):
    with pytest.raises(PpowError, match="outside the vocabulary"):
        gen.generate([10**7])
    with pytest.raises(PpowError, match="outside the vocabulary"):
        gen.detokenize([-5])
    with pytest.raises(ValueError, match="empty"):
        gen.generate([])


def test_bad_score_input(gen):
    with pytest.raises(PpowError, match="outside the vocabulary"):
        gen.score([1, 10**7])
    with pytest.raises(ValueError, match="n_last"):
        gen.score([1, 2, 3], n_last=4)
    with pytest.raises(ValueError, match="n_last"):
        gen.score([1, 2, 3], n_last=0)
    with pytest.raises(PpowError, match="context holds 32"):
        gen.score([1] * 40)
    rows = gen.score([1, 2, 3], n_last=2)  # and the generator still works afterwards
    assert rows.shape == (2, gen.n_vocab) and rows.dtype.name == "float32"


def test_unknown_parameter(gen):
    with pytest.raises(TypeError, match="temperature_typo"):
        gen.generate("hi", temperature_typo=1)


def test_use_after_close(tiny_target_gguf):
    g = ppow.Generator(tiny_target_gguf, n_ctx=32)
    g.close()
    with pytest.raises(PpowError, match="closed"):
        g.generate("hello")
    with pytest.raises(PpowError, match="closed"):
        g.tokenize("hello")
    g.close()  # twice is fine


def test_concurrent_calls_are_serialised(gen):
    outs = []
    threads = [threading.Thread(target=lambda: outs.append(gen.generate("hello", n_predict=8, ignore_eos=True).tokens))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outs) == 4 and all(o == outs[0] for o in outs)


def test_cli_errors(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_text("nope")
    r = subprocess.run([sys.executable, "-m", "ppow.cli.run", "-m", str(bad), "-p", "hi"], capture_output=True, text=True)
    assert r.returncode == 2 and "not a GGUF file" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "ppow.cli.run", "-m", str(bad), "--top-p", "3"], capture_output=True, text=True)
    assert r.returncode == 2


def test_cli_json(tiny_target_gguf, tiny_drafter_gguf):
    import json

    r = subprocess.run([sys.executable, "-m", "ppow.cli.run", "-m", tiny_target_gguf, "-md", tiny_drafter_gguf, "-p",
                        "Once upon a time", "-n", "12", "--ignore-eos", "--json", "--draft-policy", "fixed"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("text", "tokens", "n_steps", "n_drafted", "n_accepted", "tau", "tokens_per_second", "t_draft_ms",
                "t_verify_ms", "prompt_tokens"):
        assert key in out
    assert len(out["tokens"]) == 12 and out["n_drafted"] > 0
    r = subprocess.run([sys.executable, "-m", "ppow.cli.run", "-m", tiny_target_gguf, "-p", "Once upon a time",
                        "-n", "6", "--ignore-eos", "--no-lookup"], capture_output=True, text=True)
    assert r.returncode == 0 and "tau 1.00" in r.stderr and len(r.stdout) > 0
    # Prompt lookup is on by default: text that repeats gets drafts from itself, with no drafter.
    rep = "The quick brown fox jumps over the lazy dog. The quick brown fox"
    for flag, used in (([], True), (["--no-lookup"], False)):
        r = subprocess.run([sys.executable, "-m", "ppow.cli.run", "-m", tiny_target_gguf, "-p", rep, "-n", "12",
                            "--ignore-eos", "--json", "--draft-policy", "fixed", *flag], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert (json.loads(r.stdout)["stats"]["n_lookup_steps"] > 0) == used
