"""Greedy speculative decoding is token-for-token plain greedy decoding: tiny models, every k."""
import pytest

import ppow

PROMPTS = ["The quick brown fox", "Once upon a time", "In the beginning", "a b c d", "Numbers: 1 2 3",
           "hello world", "It was the best of times", "The cat sat on the", "x", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def plain(tiny_target_gguf):
    with ppow.Generator(tiny_target_gguf, n_ctx=256) as g:
        yield g


@pytest.fixture(scope="module")
def spec(tiny_target_gguf, tiny_drafter_gguf):
    with ppow.Generator(tiny_target_gguf, tiny_drafter_gguf, n_ctx=256) as g:
        yield g


@pytest.mark.parametrize("k", range(1, 9))
def test_greedy_speculative_equals_plain(plain, spec, k):
    accepted = drafted = 0
    for prompt in PROMPTS:
        ref = plain.generate(prompt, n_predict=40, ignore_eos=True)
        out = spec.generate(prompt, n_predict=40, ignore_eos=True, draft_max=k)
        assert out.tokens == ref.tokens, f"k={k} prompt={prompt!r}"
        assert out.text == ref.text
        assert out.stats.n_drafted > 0
        assert out.stats.n_steps < ref.stats.n_steps or out.stats.n_accepted == 0
        accepted += out.stats.n_accepted
        drafted += out.stats.n_drafted
    # The fixture drafter agrees often but not always: both paths (accept, reject) are exercised.
    assert 0 < accepted < drafted


def test_plain_stats(plain):
    out = plain.generate("The quick brown fox", n_predict=16, ignore_eos=True)
    s = out.stats
    assert len(out.tokens) == 16 == s.n_generated == s.n_steps
    assert s.tau == 1.0 and s.n_drafted == 0 and s.stop_reason == "length"
    assert s.prompt_tokens == len(plain.tokenize("The quick brown fox"))


def test_stats_consistent(spec):
    out = spec.generate("Once upon a time", n_predict=40, ignore_eos=True, draft_max=4)
    s = out.stats
    assert s.n_accepted + s.n_steps == s.n_generated  # every step commits accepted + 1
    assert sum(s.drafted_at) == s.n_drafted and sum(s.accepted_at) == s.n_accepted
    assert all(a <= d for a, d in zip(s.accepted_at, s.drafted_at))
    # Acceptance is prefix-shaped: position i+1 is only ever accepted after position i.
    assert all(s.accepted_at[i + 1] <= s.accepted_at[i] for i in range(len(s.accepted_at) - 1))
    assert s.tau == pytest.approx(s.n_generated / s.n_steps)
    assert s.t_verify_ms > 0 and s.t_draft_ms > 0 and s.t_total_ms >= s.t_verify_ms


@pytest.mark.parametrize("policy,p_min,k_min", [("auto", 0.0, 0), ("fixed", 0.5, 0), ("fixed", 0.0, 3)])
def test_policies_stay_lossless(plain, spec, policy, p_min, k_min):
    for prompt in PROMPTS[:5]:
        ref = plain.generate(prompt, n_predict=32, ignore_eos=True)
        out = spec.generate(prompt, n_predict=32, ignore_eos=True, draft_max=6, draft_min=k_min,
                            draft_p_min=p_min, draft_policy=policy)
        assert out.tokens == ref.tokens


def test_near_context_limit(tiny_target_gguf, tiny_drafter_gguf):
    n_ctx = 48
    with ppow.Generator(tiny_target_gguf, n_ctx=n_ctx) as p, ppow.Generator(tiny_target_gguf, tiny_drafter_gguf, n_ctx=n_ctx) as s:
        base = p.tokenize("The quick brown fox jumps over the lazy dog. " * 8)
        for length in (n_ctx - 12, n_ctx - 5, n_ctx - 2, n_ctx - 1, n_ctx):
            prompt = base[:length]
            ref = p.generate(prompt, n_predict=64, ignore_eos=True)
            for k in (1, 3, 8):
                out = s.generate(prompt, n_predict=64, ignore_eos=True, draft_max=k)
                assert out.tokens == ref.tokens, (length, k)
                assert out.stats.stop_reason == "context"
                assert length + len(out.tokens) == n_ctx + 1  # last position's logits give one more token


def test_prompt_cache_reuse(spec, plain):
    a = spec.generate("Once upon a time there was", n_predict=8, ignore_eos=True)
    b = spec.generate("Once upon a time there was", n_predict=8, ignore_eos=True)
    assert a.tokens == b.tokens and b.stats.prompt_tokens_reused > 0
    ref = plain.generate("Once upon a time there", n_predict=8, ignore_eos=True)
    out = spec.generate("Once upon a time there", n_predict=8, ignore_eos=True)
    assert out.tokens == ref.tokens


def test_stop_strings_and_stream(spec):
    full = spec.generate("Once upon a time", n_predict=40, ignore_eos=True)
    assert len(full.text) > 10
    stop = full.text[8:11]
    cut = spec.generate("Once upon a time", n_predict=40, ignore_eos=True, stop=[stop])
    assert cut.stats.stop_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    pieces = list(spec.stream("Once upon a time", n_predict=40, ignore_eos=True, stop=[stop]))
    assert "".join(pieces) == cut.text
    streamed = list(spec.stream("Once upon a time", n_predict=40, ignore_eos=True))
    assert "".join(streamed) == full.text and len(streamed) > 1


def test_tokens_in_tokens_out(spec, plain):
    ids = plain.tokenize("hello world")
    assert plain.detokenize(plain.tokenize("hello world", add_special=False)) == "hello world"
    assert spec.generate(ids, n_predict=5, ignore_eos=True).tokens == plain.generate(ids, n_predict=5, ignore_eos=True).tokens


def test_cancel_from_other_thread(tiny_target_gguf, tiny_drafter_gguf):
    import threading

    with ppow.Generator(tiny_target_gguf, tiny_drafter_gguf, n_ctx=4096) as g:
        got = []
        first = threading.Event()  # cancel once a token is out (a timer raced the prompt on a loaded machine)
        canceller = threading.Thread(target=lambda: (first.wait(), g.cancel()))
        canceller.start()
        for piece in g.stream("Once upon a time", n_predict=4000, ignore_eos=True):
            got.append(piece)
            first.set()
        canceller.join()
        s = g.last_stats
        assert s.stop_reason == "cancelled" and 0 < s.n_generated < 4000
        # The generator stays usable after a cancel and is still lossless.
        assert g.generate("hello", n_predict=4, ignore_eos=True).stats.n_generated == 4


def _reduced_drafter_gguf(tiny_drafter_hf_dir, tiny_target_gguf, tmp_path, d2t, unk):
    from pathlib import Path

    from ppow_convert import convert_drafter
    from tinymodels import make_reduced_drafter

    make_reduced_drafter(Path(tiny_drafter_hf_dir), tmp_path / "reduced", d2t, unk=unk)
    return convert_drafter(str(tmp_path / "reduced"), tiny_target_gguf, str(tmp_path / "reduced.gguf"), "f32")


def test_reduced_vocab_drafter_map_is_honoured(tiny_target_gguf, tiny_drafter_hf_dir, spec, tmp_path):
    # The full vocabulary in a shuffled order: the same drafter written with an id map. If the runtime
    # honours the map it drafts exactly what the full-vocabulary drafter drafts.
    import numpy as np

    d2t = np.random.default_rng(0).permutation(512)
    path = _reduced_drafter_gguf(tiny_drafter_hf_dir, tiny_target_gguf, tmp_path, d2t, unk=0)
    with ppow.Generator(tiny_target_gguf, path, n_ctx=256) as shuffled:
        for prompt in PROMPTS[:5]:
            ref = spec.generate(prompt, n_predict=32, ignore_eos=True, draft_max=4)
            out = shuffled.generate(prompt, n_predict=32, ignore_eos=True, draft_max=4)
            assert out.tokens == ref.tokens
            assert (out.stats.n_drafted, out.stats.n_accepted) == (ref.stats.n_drafted, ref.stats.n_accepted)


def test_reduced_vocab_drafter_is_lossless(plain, tiny_target_gguf, tiny_drafter_hf_dir, tmp_path):
    import numpy as np

    d2t = np.arange(0, 512, 2)  # half the target's tokens; the rest reach the drafter as draft id 1
    path = _reduced_drafter_gguf(tiny_drafter_hf_dir, tiny_target_gguf, tmp_path, d2t, unk=1)
    with ppow.Generator(tiny_target_gguf, path, n_ctx=256) as reduced:
        for k in (1, 3, 6):
            for prompt in PROMPTS[:5]:
                ref = plain.generate(prompt, n_predict=32, ignore_eos=True)
                out = reduced.generate(prompt, n_predict=32, ignore_eos=True, draft_max=k)
                assert out.tokens == ref.tokens
                assert out.stats.n_drafted > 0
