"""Speculative sampling has the target's distribution: two-sample chi-square tests against plain
sampling on a tiny-vocabulary model, with a power check that the test can tell distributions apart.
Confidence: each test rejects at p < 0.001 (a false alarm once in a thousand seeds sets)."""
from collections import Counter

import pytest
from scipy.stats import chi2_contingency

import ppow

N = 2500
ALPHA = 1e-3


def draws(gen, prompt, n, **kw):
    """The first two sampled tokens of n seeded runs, as (t1, t2) pairs."""
    return [tuple(gen.generate(prompt, n_predict=2, ignore_eos=True, seed=s, **kw).tokens[:2]) for s in range(n)]


def same_distribution_p(a, b):
    ca, cb = Counter(a), Counter(b)
    keys = [k for k in set(ca) | set(cb) if ca[k] + cb[k] >= 10]
    rest_a = len(a) - sum(ca[k] for k in keys)
    rest_b = len(b) - sum(cb[k] for k in keys)
    table = [[ca[k] for k in keys] + [rest_a], [cb[k] for k in keys] + [rest_b]]
    if rest_a + rest_b == 0:
        table = [row[:-1] for row in table]
    return chi2_contingency(table)[1]


@pytest.fixture(scope="module")
def gens(tiny_target_gguf, tiny_drafter_gguf):
    with ppow.Generator(tiny_target_gguf, n_ctx=64) as p, ppow.Generator(tiny_target_gguf, tiny_drafter_gguf, n_ctx=64) as s, \
            ppow.Generator(tiny_drafter_gguf, n_ctx=64) as d:
        yield p, s, d


@pytest.mark.parametrize("temp,top_k,top_p", [(1.0, 0, 1.0), (0.8, 20, 0.9)])
def test_speculative_samples_have_target_distribution(gens, temp, top_k, top_p):
    plain, spec, drafter_alone = gens
    kw = dict(temp=temp, top_k=top_k, top_p=top_p)
    prompt = "Once upon a"
    ref = draws(plain, prompt, N, **kw)
    got = [tuple(spec.generate(prompt, n_predict=2, ignore_eos=True, seed=10_000 + s, draft_max=3, **kw).tokens[:2])
           for s in range(N)]
    st = spec.last_stats
    assert st.n_drafted > 0
    # Marginal of the first token and the joint of the first two.
    assert same_distribution_p([t[0] for t in ref], [t[0] for t in got]) > ALPHA
    assert same_distribution_p(ref, got) > ALPHA
    # Power: the drafter's own distribution is detectably different from the target's.
    dq = draws(drafter_alone, prompt, N, **kw)
    assert same_distribution_p([t[0] for t in ref], [t[0] for t in dq]) < ALPHA


def test_some_drafts_rejected_and_some_accepted(gens):
    _, spec, _ = gens
    acc = drafted = 0
    for s in range(200):
        st = spec.generate("Once upon a", n_predict=6, ignore_eos=True, seed=s, temp=1.0, draft_max=4).stats
        acc, drafted = acc + st.n_accepted, drafted + st.n_drafted
    assert 0 < acc < drafted


def test_seeded_runs_repeat(gens):
    _, spec, _ = gens
    a = spec.generate("Once upon a", n_predict=24, ignore_eos=True, temp=1.0, seed=1234, draft_max=4)
    b = spec.generate("Once upon a", n_predict=24, ignore_eos=True, temp=1.0, seed=1234, draft_max=4)
    c = spec.generate("Once upon a", n_predict=24, ignore_eos=True, temp=1.0, seed=4321, draft_max=4)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens
