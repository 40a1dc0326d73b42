"""Feature (eagle3) drafters in the engine: lossless greedy and sampled decoding, catch-up after plain
steps and prompt reuse, and clear errors for drafters that do not fit the target.

Random-weight eagle3 drafters (tests/eagle3_random.py) are enough for losslessness: the output must
be the target's whatever the drafter proposes. A drafter restricted to the target's two most frequent
greedy tokens gets some drafts accepted, so accept, reject and catch-up paths all run.
"""
from collections import Counter

import pytest

import ppow
from ppow import PpowError
from eagle3_random import write_random_eagle3
from test_engine_sampling import N, ALPHA, draws, same_distribution_p

PROMPTS = ["The quick brown fox", "Once upon a time there was a little robot", "def add(a, b):",
           "The river was blue in the morning, green at noon and"]


@pytest.fixture(scope="module")
def plain(tiny_target_gguf):
    with ppow.Generator(tiny_target_gguf, n_ctx=256, n_threads=1) as g:
        yield g


@pytest.fixture(scope="module")
def frequent_drafter(tiny_target_gguf, plain, tmp_path_factory):
    counts = Counter(t for p in PROMPTS for t in plain.generate(p, n_predict=48, ignore_eos=True).tokens)
    d2t = sorted(t for t, _ in counts.most_common(2))
    return write_random_eagle3(tmp_path_factory.mktemp("e3") / "freq.gguf", tiny_target_gguf, layers=[0, 1, 1],
                               d2t=d2t, seed=3)


@pytest.fixture(scope="module")
def spec(tiny_target_gguf, frequent_drafter):
    with ppow.Generator(tiny_target_gguf, frequent_drafter, n_ctx=256, n_threads=1) as g:
        yield g


def test_kind_is_picked_from_the_file(spec):
    assert spec.drafter_kind == "feature"


@pytest.mark.parametrize("k", range(1, 9))
def test_greedy_feature_drafter_equals_plain(plain, spec, k):
    accepted = 0
    for p in PROMPTS:
        ref = plain.generate(p, n_predict=48, ignore_eos=True)
        out = spec.generate(p, n_predict=48, ignore_eos=True, draft_max=k)
        assert out.tokens == ref.tokens, (p, k)
        assert out.stats.n_draft_catchup >= len(ref.tokens) - 1  # every committed position entered
        accepted += out.stats.n_accepted
    assert accepted > 0


@pytest.mark.parametrize("policy", ["auto", "fixed"])
def test_plain_steps_in_between_and_prompt_reuse(plain, spec, policy):
    """auto mixes plain steps (features kept until the drafter catches up) with windows; a second
    call reusing the cached prompt prefix must rebuild nothing wrongly."""
    base = "Once upon a time there was a little robot who"
    ref = plain.generate(base + " wanted", n_predict=40, ignore_eos=True)
    for _ in range(2):
        a = spec.generate(base + " wanted", n_predict=40, ignore_eos=True, draft_max=4, draft_policy=policy)
        assert a.tokens == ref.tokens
    ref2 = plain.generate(base + " walked", n_predict=40, ignore_eos=True)
    b = spec.generate(base + " walked", n_predict=40, ignore_eos=True, draft_max=3, draft_policy=policy)
    assert b.tokens == ref2.tokens and b.stats.prompt_tokens_reused > 0


def test_calibration_after_windows(plain, tiny_target_gguf, frequent_drafter):
    """After a window the target's features run ahead of the drafter's entries; auto's first use (and
    cost_profile) times the catch-up from there (it once encoded at the features' positions, which
    llama.cpp refused), and the output stays the target's."""
    prompt = "The river was blue in the morning, green at noon and"
    ref = plain.generate(prompt, n_predict=32, ignore_eos=True)
    with ppow.Generator(tiny_target_gguf, frequent_drafter, n_ctx=256, n_threads=1) as g:
        assert g.generate(prompt, n_predict=32, ignore_eos=True, draft_max=4).tokens == ref.tokens
        assert g.generate(prompt, n_predict=32, ignore_eos=True, draft_max=4, draft_policy="auto").tokens == ref.tokens
        profile = g.cost_profile(4)
        assert profile["catchup_ms"] > 0 and profile["draft_ms"] > 0
        assert g.generate(prompt, n_predict=32, ignore_eos=True, draft_max=4).tokens == ref.tokens


def test_near_context_limit(tiny_target_gguf, frequent_drafter):
    with ppow.Generator(tiny_target_gguf, n_ctx=64, n_threads=1) as p, \
            ppow.Generator(tiny_target_gguf, frequent_drafter, n_ctx=64, n_threads=1) as s:
        ids = p.tokenize("The quick brown fox jumps over the lazy dog. " * 6)[:52]
        for k in (1, 4, 8):
            ref = p.generate(ids, n_predict=30, ignore_eos=True)
            out = s.generate(ids, n_predict=30, ignore_eos=True, draft_max=k)
            assert out.tokens == ref.tokens and out.stats.stop_reason == ref.stats.stop_reason == "context"


def test_two_threads(tiny_target_gguf, frequent_drafter):
    with ppow.Generator(tiny_target_gguf, n_ctx=256, n_threads=2) as p, \
            ppow.Generator(tiny_target_gguf, frequent_drafter, n_ctx=256, n_threads=2) as s:
        for prompt in PROMPTS:
            assert s.generate(prompt, n_predict=40, draft_max=5).tokens == p.generate(prompt, n_predict=40).tokens


@pytest.mark.parametrize("temp,top_k,top_p", [(1.0, 0, 1.0), (0.8, 20, 0.9)])
def test_sampling_has_target_distribution(tiny_target_gguf, tmp_path_factory, temp, top_k, top_p):
    drafter = write_random_eagle3(tmp_path_factory.mktemp("e3s") / "r.gguf", tiny_target_gguf, layers=[0, 1, 1],
                                  seed=5, scale=0.2)
    kw = dict(temp=temp, top_k=top_k, top_p=top_p)
    with ppow.Generator(tiny_target_gguf, n_ctx=64, n_threads=1) as plain, \
            ppow.Generator(tiny_target_gguf, drafter, n_ctx=64, n_threads=1) as spec:
        ref = draws(plain, "Once upon a", N, **kw)
        got = [tuple(spec.generate("Once upon a", n_predict=2, ignore_eos=True, seed=10_000 + s, draft_max=3,
                                   **kw).tokens[:2]) for s in range(N)]
        assert spec.last_stats.n_drafted > 0
    assert same_distribution_p([t[0] for t in ref], [t[0] for t in got]) > ALPHA
    assert same_distribution_p(ref, got) > ALPHA


def _gen(target, drafter, **kw):
    return ppow.Generator(target, drafter, n_ctx=64, n_threads=1, **kw)


@pytest.mark.parametrize("overrides,match", [
    ({"eagle3.target_hidden_size": 32}, "hidden size 32"),
    ({"eagle3.vocab_size": 1000}, "vocabulary of 1000"),
    ({"eagle3.target_layers": [0, 1, 7]}, "target layer 7"),
])
def test_drafter_that_does_not_fit_the_target(tiny_target_gguf, tmp_path, overrides, match):
    bad = write_random_eagle3(tmp_path / "bad.gguf", tiny_target_gguf, layers=[0, 1, 1], overrides=overrides)
    with pytest.raises(PpowError, match=match):
        _gen(tiny_target_gguf, bad)


def test_bad_files_and_kinds(tiny_target_gguf, tiny_drafter_gguf, frequent_drafter, tmp_path):
    with pytest.raises(PpowError, match="not an eagle3 GGUF"):
        _gen(tiny_target_gguf, tiny_drafter_gguf, drafter_kind="feature")
    with pytest.raises(PpowError, match="not a model drafter"):
        _gen(tiny_target_gguf, frequent_drafter, drafter_kind="model")
    with pytest.raises(ValueError, match="drafter_kind"):
        _gen(tiny_target_gguf, frequent_drafter, drafter_kind="tree")
    trunc = tmp_path / "trunc.gguf"
    data = open(frequent_drafter, "rb").read()
    trunc.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(PpowError):
        _gen(tiny_target_gguf, str(trunc))
    with _gen(tiny_target_gguf, tiny_drafter_gguf, drafter_kind="model") as g:  # the other kind still loads
        assert g.drafter_kind == "model"
    with pytest.raises(ValueError, match="n_threads_draft"):
        _gen(tiny_target_gguf, frequent_drafter, n_threads_draft=-1)


def test_drafter_threads_apart_from_the_target(plain, tiny_target_gguf, frequent_drafter):
    ref = plain.generate(PROMPTS[1], n_predict=32, ignore_eos=True)
    with ppow.Generator(tiny_target_gguf, frequent_drafter, n_ctx=256, n_threads=2, n_threads_draft=1) as g:
        out = g.generate(PROMPTS[1], n_predict=32, ignore_eos=True, draft_max=3)
    assert out.tokens == ref.tokens and out.stats.n_drafted > 0


def test_cancel_and_stats(tiny_target_gguf, frequent_drafter):
    import threading

    with ppow.Generator(tiny_target_gguf, frequent_drafter, n_ctx=4096, n_threads=1) as g:
        pieces = []
        timer = threading.Timer(0.3, g.cancel)
        timer.start()
        out = g.generate("The quick brown fox", n_predict=3000, ignore_eos=True, draft_max=4)
        timer.cancel()
        assert out.stats.stop_reason == "cancelled" and 0 < out.stats.n_generated < 3000
        again = g.generate("The quick brown fox", n_predict=16, ignore_eos=True, draft_max=4)
        assert len(again.tokens) == 16
        st = again.stats
        assert st.n_steps > 0 and st.t_draft_catchup_ms <= st.t_draft_forward_ms <= st.t_draft_ms
        pieces = list(g.stream("Once upon a time", n_predict=12, ignore_eos=True, draft_max=3))
        assert "".join(pieces) == g.generate("Once upon a time", n_predict=12, ignore_eos=True,
                                             use_drafter=False).text


@pytest.mark.real
def test_gemma_random_feature_drafter_lossless_two_threads(gemma_gguf, tmp_path):
    """Gemma 3 270M with a random-weight eagle3 drafter (EAGLE-3's layers 2, 9, 15; a 2,048-token draft
    vocabulary that includes the target's own greedy tokens, so some drafts are accepted): greedy
    output equals plain at k = 1, 3, 7 on prompts past 256 tokens, 2 threads (batch-invariant
    padding on), with the catch-up batches that follow every accepted run."""
    import numpy as np

    from test_engine_real import measurements

    body = measurements(4)
    texts = [f"Question: Summarize the list below.\n{body}\nAnswer:",
             f"{body}\nQuestion: Which item is measured in units of 5, and what does it measure?\nAnswer:"]
    with ppow.Generator(gemma_gguf, n_ctx=1024, n_threads=2) as plain:
        ids = [plain.tokenize(t) for t in texts]
        refs = [plain.generate(i, n_predict=24, ignore_eos=True) for i in ids]
    assert all(len(i) > 300 for i in ids)
    rng = np.random.default_rng(0)
    own = {t for r in refs for t in r.tokens}
    d2t = sorted(own | set(rng.choice(262144, 2048 - len(own), replace=False).tolist()))[:2048]
    drafter = write_random_eagle3(tmp_path / "g.gguf", gemma_gguf, layers=[2, 9, 15], d2t=d2t, n_head=4,
                                  head_dim=64, n_ff=512, seed=1)
    with ppow.Generator(gemma_gguf, drafter, n_ctx=1024, n_threads=2) as g:
        assert g.drafter_kind == "feature"
        for j, k in enumerate((1, 3, 7)):
            i, ref = ids[j % 2], refs[j % 2]
            out = g.generate(i, n_predict=24, draft_max=k, ignore_eos=True)
            assert out.tokens == ref.tokens, (len(i), k)
            # every committed position entered the drafter (the reused prefix earlier; of a long
            # prompt, the last 64 positions: FeatureDrafter::kMaxCatchup), but the tokens of the last
            # step, after which no window is drafted
            st = out.stats
            assert st.n_draft_catchup >= min(len(i) - 1 - st.prompt_tokens_reused, 64) + len(out.tokens) - 2


def test_long_prompt_catch_up_restarts_the_drafter_cache(tiny_target_gguf, frequent_drafter):
    """A prompt past the 64-position catch-up bound, then a second prompt sharing only its start:
    the drafter's cache restarts at the first position kept (llama.cpp wants consecutive positions),
    and the output stays the target's."""
    with ppow.Generator(tiny_target_gguf, n_ctx=512, n_threads=1) as p, \
            ppow.Generator(tiny_target_gguf, frequent_drafter, n_ctx=512, n_threads=1) as s:
        body = p.tokenize("The quick brown fox jumps over the lazy dog. The river was blue. " * 30)[:300]
        for prompt in (body, body[:3] + body[40:300], body[:250]):
            for k in (2, 5):
                ref = p.generate(prompt, n_predict=24, ignore_eos=True)
                out = s.generate(prompt, n_predict=24, ignore_eos=True, draft_max=k)
                assert out.tokens == ref.tokens, (len(prompt), k)
