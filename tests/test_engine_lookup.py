"""Prompt lookup (Generator(lookup=True)): drafts taken from the text itself, with no drafter or beside
either drafter kind, under both window policies. Greedy output stays token-identical to plain greedy
output (also past the depth where single decodes are padded, with 2 threads); sampled output keeps the
target's distribution."""
import pytest

import ppow
from ppow import _core
from eagle3_random import write_random_eagle3
from test_engine_sampling import ALPHA, N, draws, same_distribution_p

# Prompts that repeat themselves, so lookup finds earlier occurrences of the latest tokens.
PROMPTS = ["a b c d a b c d a b c d a b", "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a",
           "The cat sat on the mat. The cat sat on the", "1 2 3 4 5 1 2 3 4 5 1 2 3"]
DEEP = "one two three four five six seven eight nine ten " * 30  # ~300 tokens: past the padding depth


@pytest.fixture(scope="module")
def drafters(tiny_target_gguf, tiny_drafter_gguf, tmp_path_factory):
    feature = write_random_eagle3(tmp_path_factory.mktemp("e3") / "r.gguf", tiny_target_gguf, layers=[0, 1, 1], seed=5)
    return {"none": None, "model": tiny_drafter_gguf, "feature": str(feature)}


@pytest.mark.parametrize("kind", ["none", "model", "feature"])
@pytest.mark.parametrize("policy", ["fixed", "auto"])
def test_greedy_with_lookup_equals_plain(tiny_target_gguf, drafters, kind, policy):
    lookup_steps = lookup_accepted = shadow = 0
    with ppow.Generator(tiny_target_gguf, n_ctx=1024, n_threads=2) as plain, \
            ppow.Generator(tiny_target_gguf, drafters[kind], n_ctx=1024, n_threads=2) as g:
        for prompt in PROMPTS + [DEEP]:
            ref = plain.generate(prompt, n_predict=48, ignore_eos=True)
            for k in (1, 3):
                out = g.generate(prompt, n_predict=48, ignore_eos=True, draft_max=k, draft_policy=policy, lookup=True)
                assert out.tokens == ref.tokens, (kind, policy, k, prompt[:20])
                s = out.stats
                assert s.n_lookup_drafted <= s.n_drafted and s.n_lookup_accepted <= s.n_accepted
                assert s.n_lookup_accepted <= s.n_lookup_drafted <= k * s.n_lookup_steps
                lookup_steps += s.n_lookup_steps
                lookup_accepted += s.n_lookup_accepted
                shadow += s.n_lookup_shadow
    # On text that repeats, lookup drafts and the target accepts some of them (auto's choices hang on
    # this machine's timings of a tiny model: only exactness is asserted for it).
    if policy == "fixed":
        assert lookup_steps > 0 and lookup_accepted > 0 and shadow == 0
    else:  # every match is judged: verified where auto drafts it, against the committed tokens where not
        assert lookup_steps + shadow > 0


def test_lookup_picks_the_occurrence_that_agrees_furthest_back():
    # The tail (3, 4) occurs twice before: the latest occurrence agrees 2 tokens back, the earlier one
    # 4 (1, 2, 3, 4), so the earlier one's continuation is the draft, and its key is that of 3-4.
    hist = [1, 2, 3, 4, 9, 3, 4, 8, 1, 2, 3, 4]
    assert _core.lookup_draft(hist, 3) == ([9, 3, 4], 2, 4, 2)
    # Equal agreement: the latest occurrence; a 1-token tail where no 2-gram recurs.
    assert _core.lookup_draft([5, 1, 2, 3, 4, 5, 1, 2, 7, 7, 1, 2], 3) == ([7, 7, 1], 2, 2, 1)
    assert _core.lookup_draft([7, 1, 8, 1], 2) == ([8, 1], 1, 1, 0)
    # A copy in progress: agreement measured up to 16 tokens back (key 4), draft capped at n_max.
    text = list(range(100, 140))
    assert _core.lookup_draft(text + text[:20], 4) == (text[20:24], 2, 16, 4)
    assert _core.lookup_draft([1, 2, 3], 3) == ([], 0, 0, 0) and _core.lookup_draft([], 3) == ([], 0, 0, 0)
    assert _core.lookup_draft(text + text[:20], 0)[0] == []


def test_lookup_off_by_default(tiny_target_gguf):
    prompt = "The quick brown fox jumps over the lazy dog. The quick brown fox"  # the tiny model's own text
    with ppow.Generator(tiny_target_gguf, n_ctx=256, n_threads=1) as g:
        off = g.generate(prompt, n_predict=24, ignore_eos=True)
        assert off.stats.n_lookup_steps == 0 and off.stats.n_steps == 24  # plain: one token per step
        on = g.generate(prompt, n_predict=24, ignore_eos=True, lookup=True)
        assert on.tokens == off.tokens and on.stats.n_lookup_steps > 0 and on.stats.n_steps < 24
        with pytest.raises(ValueError, match="lookup must be True or False"):
            g.generate("x", lookup="yes")


@pytest.mark.parametrize("kind", ["none", "feature"])
def test_sampling_with_lookup_has_the_target_distribution(tiny_target_gguf, drafters, kind):
    """Lookup drafts are one-hot q's: accepted with probability p(x), else a draw from p without x.
    Two-sample chi-square on the first two sampled tokens against plain sampling, as for the drafters
    (test_engine_sampling.py); the prompt repeats, so lookup drafts at the first step."""
    prompt = "The quick brown fox jumps over the lazy dog. The quick brown fox"
    with ppow.Generator(tiny_target_gguf, n_ctx=64, n_threads=1) as plain, \
            ppow.Generator(tiny_target_gguf, drafters[kind], n_ctx=64, n_threads=1) as g:
        ref = draws(plain, prompt, N, temp=1.0)
        got, lookup_drafted, accepted = [], 0, 0
        for s in range(N):
            out = g.generate(prompt, n_predict=2, ignore_eos=True, seed=10_000 + s, temp=1.0, draft_max=3,
                             lookup=True)
            got.append(tuple(out.tokens[:2]))
            lookup_drafted += out.stats.n_lookup_drafted
            accepted += out.stats.n_lookup_accepted
    assert lookup_drafted > 0 and 0 < accepted < lookup_drafted  # both branches of the rule ran
    assert same_distribution_p([t[0] for t in ref], [t[0] for t in got]) > ALPHA
    assert same_distribution_p(ref, got) > ALPHA


@pytest.mark.real
def test_gemma_greedy_with_lookup_is_lossless(gemma_gguf):
    prompt = ("Question: Copy this list and add one more fruit: apple, banana, cherry, date, elderberry, fig, "
              "grape.\nAnswer:")
    with ppow.Generator(gemma_gguf, ppow.default_drafter("kd"), n_ctx=512, n_threads=2) as g:
        ref = g.generate(prompt, n_predict=40, ignore_eos=True, use_drafter=False)
        for policy in ("fixed", "auto"):
            out = g.generate(prompt, n_predict=40, ignore_eos=True, draft_max=2, draft_policy=policy, lookup=True)
            assert out.tokens == ref.tokens, policy
        # Gemma rewrites the list (capitalised, numbered): lookup's matches are judged, verified or not.
        assert out.stats.n_lookup_steps + out.stats.n_lookup_shadow > 0
