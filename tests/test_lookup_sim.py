"""tools/lookup-sim.py, the replay of auto's prompt-lookup rule on greedy trajectories, stays a model of
the engine: its lookup picks the draft the engine picks, and its rules behave as documented."""
import importlib.util
from pathlib import Path

import pytest

from ppow import _core

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_spec = importlib.util.spec_from_file_location("lookup_sim", Path(__file__).parents[1] / "tools" / "lookup-sim.py")
sim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim)


@settings(max_examples=300, deadline=None)
@given(hist=st.lists(st.integers(0, 3), max_size=60), n_max=st.integers(0, 8))
def test_simulated_lookup_picks_the_engines_draft(hist, n_max):
    # A four-token alphabet: matches, ties and long agreements everywhere.
    tokens, ngram, match, key = _core.lookup_draft(hist, n_max)
    s_tokens, s_ngram, s_match = sim.lookup_draft(hist, n_max, longest=True)
    if n_max == 0:
        assert tokens == [] and s_tokens[:0] == []
        return
    assert (s_tokens, s_ngram, s_match) == (tokens, ngram, match)
    if tokens:
        assert sim.match_key(s_ngram, s_match, keyed=True) - 1 == key


COSTS_CHEAP = {n: 1.0 + 0.1 * (n - 1) for n in range(1, 8)}   # verify rows nearly free
COSTS_DEAR = {n: 1.0 + 0.9 * (n - 1) for n in range(1, 8)}    # each row almost a whole step


def test_a_copy_pays_and_the_oracle_bounds_every_rule():
    text = list(range(100, 160))
    prompt, traj = text, text[:40]  # the answer copies its prompt
    plain = len(traj) * COSTS_CHEAP[1]
    times = {name: sim.generate(sim.make_rule(name, COSTS_CHEAP), prompt, traj, 40)[0]
             for name in ("engine", "oracle")}
    assert times["oracle"] <= times["engine"] < 0.5 * plain


def test_where_nothing_repeats_usefully_the_engine_rule_stays_near_plain():
    # Every other answer token recurs, but what followed it before never follows it again: every
    # lookup window fails at its first token.
    prompt = [1, 2, 3, 4] * 10
    traj = [t for i in range(24) for t in (2, 100 + i)]
    plain = len(traj) * COSTS_DEAR[1]
    engine = sim.make_rule("engine", COSTS_DEAR)
    optimistic = sim.make_rule("optimistic", COSTS_DEAR)
    t_engine = t_optimistic = 0.0
    for _ in range(3):  # three generations: the evidence carries over
        t_engine += sim.generate(engine, prompt, traj, len(traj))[0]
        t_optimistic += sim.generate(optimistic, prompt, traj, len(traj))[0]
    assert t_engine <= 1.02 * 3 * plain  # judged for free while declined: it never pays to learn
    assert t_optimistic > 1.03 * t_engine  # the rule it replaced paid for its tries
