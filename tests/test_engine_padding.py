"""The decode-shape options the GPU check flips (docs/gpu.md): pad_rows (every decode padded to a fixed
width with throw-away rows that have logits too) and verify_batch_max, from Generator arguments or the
environment (PPOW_PAD_ROWS, PPOW_VERIFY_BATCH_MAX). On the CPU every width up to 7 rows is inside its
batch-invariant band, so each setting must keep greedy speculative output token-identical to plain
greedy output of the default engine, for every drafter kind and prompt lookup, below and past the depth
where the CPU's own one-token padding starts."""
import numpy as np
import pytest

import ppow
from eagle3_random import write_random_eagle3

PROMPTS = ["The quick brown fox", "Once upon a time there was a little robot",
           "one two three four five six seven eight nine ten " * 8]  # ~230 tokens: past the padding depth

SETTINGS = [dict(pad_rows=2), dict(pad_rows=4), dict(pad_rows=4, verify_batch_max=2), dict(pad_rows=3, verify_batch_max=6),
            dict(verify_batch_max=3)]

CUDA = "CUDA" in ppow.build_info()["backends"]
pytestmark = pytest.mark.skipif(CUDA, reason="CPU rules; the GPU runs them through tests/test_gpu.py")


@pytest.fixture(scope="module")
def drafters(tiny_target_gguf, tiny_drafter_gguf, tmp_path_factory):
    feature = write_random_eagle3(tmp_path_factory.mktemp("e3") / "r.gguf", tiny_target_gguf, layers=[0, 1, 1], seed=5)
    return {"model": tiny_drafter_gguf, "feature": str(feature)}


@pytest.fixture(scope="module")
def refs(tiny_target_gguf):
    with ppow.Generator(tiny_target_gguf, n_ctx=512, n_threads=2) as plain:
        return {p: plain.generate(p, n_predict=40, ignore_eos=True).tokens for p in PROMPTS}


@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("kind", ["model", "feature"])
def test_padding_options_stay_exact_on_the_cpu(tiny_target_gguf, drafters, refs, kind, kw):
    with ppow.Generator(tiny_target_gguf, drafters[kind], n_ctx=512, n_threads=2, **kw) as g:
        assert g.exact, g.exact_reason
        b = g.backend
        assert b["float_matrices"]  # the tiny target is F32: never a one-row decode on the CPU
        assert b["pad_rows"] == max(kw.get("pad_rows", 0), 2)
        assert b["verify_batch_max"] == kw.get("verify_batch_max", kw.get("pad_rows") or 7)
        drafted = 0
        for prompt in PROMPTS:
            for policy, k in (("fixed", 1), ("fixed", 5), ("auto", 8)):
                out = g.generate(prompt, n_predict=40, ignore_eos=True, draft_max=k, draft_policy=policy,
                                 lookup=policy == "auto")
                assert out.tokens == refs[prompt], (kind, kw, policy, k, len(prompt))
                assert out.stats.exact
                drafted += out.stats.n_drafted
            plain = g.generate(prompt, n_predict=40, ignore_eos=True, use_drafter=False)
            assert plain.tokens == refs[prompt]
        assert drafted > 0


def test_padded_scores_equal_unpadded(tiny_target_gguf):
    # Logit rows are read by batch index: padding rows with logits of their own must not shift them.
    with ppow.Generator(tiny_target_gguf, n_ctx=512, n_threads=2) as a, \
            ppow.Generator(tiny_target_gguf, n_ctx=512, n_threads=2, pad_rows=5) as b, \
            ppow.Generator(tiny_target_gguf, n_ctx=512, n_threads=2, batch_invariant=False) as own:
        ids = a.tokenize(PROMPTS[2])
        for n_last in (1, 2, 4, 5, 6):
            assert np.array_equal(a.score(ids, n_last), b.score(ids, n_last)), n_last
        # An F32 target's one-row product sums in another order (llama.cpp's own one-token decode):
        # what makes the automatic padding of F32/F16/BF16 targets necessary.
        alone, padded = own.score(ids, 1), a.score(ids, 1)
        assert not np.array_equal(alone, padded) and np.allclose(alone, padded, atol=1e-3)
        la, fa = a.features(ids[:40], [0, 1, a.n_layer], n_last=40)
        lb, fb = b.features(ids[:40], [0, 1, b.n_layer], n_last=40)
        assert np.array_equal(la, lb) and np.array_equal(fa, fb)
        # a short decode (fewer rows than pad_rows) with the final norm captured
        la, fa = a.features(ids[:3], [a.n_layer], n_last=3)
        lb, fb = b.features(ids[:3], [b.n_layer], n_last=3)
        assert np.array_equal(la, lb) and np.array_equal(fa, fb)


def test_options_from_the_environment(tiny_target_gguf, monkeypatch):
    monkeypatch.setenv("PPOW_PAD_ROWS", "4")
    with ppow.Generator(tiny_target_gguf, n_ctx=64) as g:
        assert g.backend["pad_rows"] == 4 and g.verify_batch_max == 4  # fixed width: verify at most pad_rows
    monkeypatch.setenv("PPOW_VERIFY_BATCH_MAX", "6")
    with ppow.Generator(tiny_target_gguf, n_ctx=64) as g:
        assert g.backend["pad_rows"] == 4 and g.verify_batch_max == 6
    with ppow.Generator(tiny_target_gguf, n_ctx=64, pad_rows=0, verify_batch_max=3) as g:  # arguments win
        assert g.backend["pad_rows"] == 2 and g.verify_batch_max == 3  # 2: the F32 rule
    monkeypatch.setenv("PPOW_PAD_ROWS", "lots")
    with pytest.raises(ppow.PpowError, match="PPOW_PAD_ROWS must be an integer"):
        ppow.Generator(tiny_target_gguf, n_ctx=64)
    monkeypatch.setenv("PPOW_PAD_ROWS", "0")
    monkeypatch.setenv("PPOW_VERIFY_BATCH_MAX", "0")
    with pytest.raises(ppow.PpowError, match="PPOW_VERIFY_BATCH_MAX must be an integer"):
        ppow.Generator(tiny_target_gguf, n_ctx=64)


def test_option_arguments_are_checked(tiny_target_gguf):
    for kw in (dict(pad_rows=-1), dict(pad_rows=65), dict(verify_batch_max=0), dict(pad_rows=True)):
        with pytest.raises(ValueError):
            ppow.Generator(tiny_target_gguf, n_ctx=64, **kw)


def test_padding_holds_to_the_last_position(tiny_target_gguf, tiny_drafter_gguf):
    # The context keeps room for the padding rows beside a full sequence 0.
    n_ctx = 48
    with ppow.Generator(tiny_target_gguf, n_ctx=n_ctx, n_threads=2) as p, \
            ppow.Generator(tiny_target_gguf, tiny_drafter_gguf, n_ctx=n_ctx, n_threads=2, pad_rows=4) as s:
        ids = p.tokenize("The quick brown fox jumps over the lazy dog. " * 8)[:n_ctx - 5]
        ref = p.generate(ids, n_predict=64, ignore_eos=True)
        out = s.generate(ids, n_predict=64, ignore_eos=True, draft_max=3)
        assert out.tokens == ref.tokens and out.stats.stop_reason == "context"
