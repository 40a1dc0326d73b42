"""The auto policy's costs: calibration that warms up and takes medians, in-loop timings that one cold
outlier cannot move, re-calibration when the loop drifts from the calibration (backed off), and an
unused drafter that costs (almost) nothing.

Timings come from Python callables (an injected cost source), so the rules are tested exactly on any
machine; the engine tests at the end check the same rules in generate() on the tiny models.
"""
import pytest

import ppow
from ppow import _core


def cold_then(steady, cold, n_cold=1):
    """A measure(n) whose first n_cold calls per size are cold (a new batch shape on a GPU: a graph
    rebuild), then steady[n]."""
    calls = {}

    def measure(n):
        calls[n] = calls.get(n, 0) + 1
        return cold if calls[n] <= n_cold else steady[n]

    return measure, calls


STEADY = {1: 1.22, 2: 1.28, 3: 1.48}


def test_calibration_discards_the_first_runs_of_each_shape():
    # The H200 case: one cold 2-row verify learned as 6.35 ms (steady 1.28) made auto never draft.
    c = _core.CostModel()
    measure, calls = cold_then(STEADY, cold=6.35, n_cold=2)
    c.calibrate([1, 2, 3], measure)
    assert c.calibrated and c.n_calibrations == 1
    for n, ms in STEADY.items():
        assert c.verify_ms(n) == pytest.approx(ms)
        assert calls[n] == 2 + 5  # warm-up runs, then the timed ones


def test_calibration_takes_the_median():
    c = _core.CostModel()
    seq = iter([9.0, 9.0, 1.0, 50.0, 1.1, 0.9, 1.2] * 3)  # two warm-ups, then five with one outlier
    c.calibrate([1], lambda n: next(seq))
    assert c.verify_ms(1) == pytest.approx(1.1)


def test_calibration_takes_the_sizes_in_turn():
    # The machine gets ten times busier part way through the calibration (a shared 2-core machine):
    # taken in turn, every size sees the change alike and the ratios the model keeps still hold.
    calls = []

    def measure(n):
        calls.append(n)
        return {1: 1.0, 2: 1.5, 3: 2.0}[n] * (1.0 if len(calls) <= 12 else 10.0)

    c = _core.CostModel()
    c.calibrate([1, 2, 3], measure)
    assert calls[:9] == [1, 2, 3] * 3
    assert c.verify_ms(2) / c.verify_ms(1) == pytest.approx(1.5)
    assert c.verify_ms(3) / c.verify_ms(1) == pytest.approx(2.0)


def test_a_cold_in_loop_timing_does_not_stick():
    c = _core.CostModel()
    c.observe_verify(2, 6.35)  # the fixed-policy warm-up call before any calibration
    assert not c.calibrated
    assert c.begin_generation()  # an in-loop timing is no calibration: auto still calibrates
    c.calibrate([1, 2, 3], lambda n: STEADY[n])
    assert c.verify_ms(2) == pytest.approx(1.28)  # the calibration replaced what the loop had seen
    c.observe_verify(2, 6.35)  # one cold verify after it: ignored until several agree
    assert c.verify_ms(2) == pytest.approx(1.28)
    c.observe_verify(2, 1.30)
    c.observe_verify(2, 1.31)
    assert c.verify_ms(2) == pytest.approx(1.31)  # the median of the loop's own timings (T(1) unchanged)


def test_drift_triggers_recalibration_with_back_off():
    c = _core.CostModel()
    c.calibrate([1, 2], lambda n: STEADY[n])
    assert not c.begin_generation()
    for _ in range(8):
        c.observe_verify(1, 3.0)
    assert not c.drifted  # not until the window of recent timings is full
    c.observe_verify(1, 3.0)
    assert c.drifted and c.verify_ms(1) == pytest.approx(3.0)
    assert c.begin_generation()  # drifted: calibrate at this generation's set-up
    c.calibrate([1, 2], lambda n: 2.9)
    assert not c.drifted and c.n_calibrations == 2
    # The drift persists (the loop really is slower than any calibration shows): back off.
    for _ in range(9):
        c.observe_verify(1, 6.0)
    assert c.drifted
    assert not c.begin_generation()  # gap 2 after the first recalibration
    assert c.begin_generation()
    c.calibrate([1, 2], lambda n: 2.9)
    for _ in range(9):
        c.observe_verify(1, 6.0)
    assert [c.begin_generation() for _ in range(4)] == [False, False, False, True]  # gap 4


def test_a_busier_machine_scales_every_size():
    # A plain step is timed at every step, a 3-row verify only when auto drafts: when the machine gets
    # busier, the rarely seen sizes must not stay at their quiet-time cost (drafting would then look
    # cheap), nor the drafter's.
    c = _core.CostModel()
    c.calibrate([1, 2, 3], lambda n: {1: 10.0, 2: 15.0, 3: 20.0}[n], draft_step=lambda: 1.0)
    for _ in range(3):
        c.observe_verify(1, 30.0)
    assert c.verify_ms(1) == pytest.approx(30.0)
    assert c.verify_ms(2) == pytest.approx(45.0) and c.verify_ms(3) == pytest.approx(60.0)
    assert c.draft_ms == pytest.approx(3.0)
    # sizes seen in the loop keep their own ratio to the plain step of their time
    for _ in range(3):
        c.observe_verify(2, 33.0)  # 1.1 x the plain step now
    assert c.verify_ms(2) == pytest.approx(33.0)


def test_slower_in_loop_timings_within_tolerance_are_no_drift():
    c = _core.CostModel()
    c.calibrate([1], lambda n: 1.0)
    for _ in range(9):
        c.observe_verify(1, 1.2)
    assert not c.drifted


def test_drafter_costs_are_medians_too():
    c = _core.CostModel()
    c.calibrate([1, 2], lambda n: STEADY[n], draft_step=lambda: 0.2, catchup=lambda: 0.3)
    assert c.draft_ms == pytest.approx(0.2) and c.catchup_ms == pytest.approx(0.3)
    c.observe_draft_token(5.0)  # one slow step
    assert c.draft_ms == pytest.approx(0.2)
    for ms in (0.25, 0.26):
        c.observe_draft_token(ms)
    assert c.draft_ms == pytest.approx(0.26)  # median of 5.0, 0.25, 0.26


def test_skipped_sizes_stay_unknown():
    c = _core.CostModel()
    c.calibrate([1, 2, 3], lambda n: 0.0 if n == 3 else STEADY[n])  # 3 rows do not fit
    assert c.verify_ms(3) == pytest.approx(1.28 + (1.28 - 1.22))  # extrapolated


# -- in the engine -------------------------------------------------------------------------------------
PROMPTS = ["The quick brown fox", "Once upon a time", "In the beginning", "a b c d", "hello world"]


def test_auto_calibrates_after_a_fixed_warm_up_call(tiny_target_gguf, tiny_drafter_gguf):
    # What ppow-bench does: a fixed-window warm-up call (in-loop timings recorded, no calibration),
    # then the auto policy: it must still calibrate, at set-up.
    with ppow.Generator(tiny_target_gguf, tiny_drafter_gguf, n_ctx=128, n_threads=1) as g:
        g.generate("Hello", n_predict=2, draft_max=1, draft_policy="fixed")
        s = g.generate("Hello", n_predict=8, draft_policy="auto", ignore_eos=True).stats
        assert s.n_calibrations == 1 and 0 < s.t_calibrate_ms <= s.t_prompt_ms
        s = g.generate("Hello", n_predict=8, draft_policy="auto", ignore_eos=True).stats
        assert s.n_calibrations == 0 and s.t_calibrate_ms == 0


def useless_feature_drafter(tmp_path, target):
    """An eagle3 drafter with random weights: (almost) never agrees with the target."""
    from eagle3_random import write_random_eagle3

    path = tmp_path / "useless-eagle3.gguf"
    write_random_eagle3(path, target, seed=7, scale=0.5)
    return str(path)


def test_an_unused_feature_drafter_costs_no_capture(tmp_path, tiny_target_gguf):
    drafter = useless_feature_drafter(tmp_path, tiny_target_gguf)
    with ppow.Generator(tiny_target_gguf, n_ctx=512, n_threads=1) as plain, \
            ppow.Generator(tiny_target_gguf, drafter, n_ctx=512, n_threads=1) as g:
        for i in range(6):  # the policy learns the drafter is useless
            for prompt in PROMPTS:
                ref = plain.generate(prompt, n_predict=48, ignore_eos=True)
                out = g.generate(prompt, n_predict=48, ignore_eos=True, draft_policy="auto")
                assert out.tokens == ref.tokens
        s = out.stats
        # Plain steps but for rare probes, and the target's features are captured only around them.
        assert s.n_plain_steps >= s.n_steps - 2
        assert s.n_capture_steps <= s.n_steps // 2, (s.n_capture_steps, s.n_steps)
        assert s.n_draft_catchup <= 2 * 16 + 2  # probes take in a bounded number of positions


def test_an_unused_standalone_drafter_probes_with_a_bounded_catch_up(tmp_path):
    # A standalone drafter auto leaves idle has fallen the whole history behind; its probes take in
    # only the latest positions (the probe cap, as a feature drafter's), not up to 256 tokens each.
    import ggufgen as G

    target, drafter = str(tmp_path / "target.gguf"), str(tmp_path / "drafter.gguf")
    G.write(target, *G.tiny_target())
    G.write(drafter, *G.tiny_model_drafter())  # random weights: it (almost) never agrees
    long_prompts = [f"{p} hello world the robot paints a blue river " * 2 for p in PROMPTS]
    with ppow.Generator(target, n_ctx=256, n_threads=1) as plain, \
            ppow.Generator(target, drafter, n_ctx=256, n_threads=1) as g:
        probes = 0
        for i in range(3):
            for prompt in long_prompts:
                ref = plain.generate(prompt, n_predict=48, ignore_eos=True)
                out = g.generate(prompt, n_predict=48, ignore_eos=True, draft_policy="auto")
                assert out.tokens == ref.tokens
                s = out.stats
                assert s.prompt_tokens > 60  # a new prompt: the drafter is far more than 16 behind
                if s.n_plain_steps + s.n_probe_steps == s.n_steps:  # drafted in probes only
                    assert s.n_draft_catchup <= 16 * s.n_probe_steps, (i, prompt, s.n_draft_catchup)
                    probes += s.n_probe_steps
        assert probes >= 2


def test_feature_drafter_resumes_after_gaps_exactly(tmp_path, tiny_target_gguf):
    # Capture goes off and on again while the policy switches; drafting after a gap restarts the
    # drafter's features and entries there, and every output stays plain's.
    from collections import Counter

    from eagle3_random import write_random_eagle3

    with ppow.Generator(tiny_target_gguf, n_ctx=512, n_threads=1) as plain:
        counts = Counter(t for p in PROMPTS for t in plain.generate(p, n_predict=40, ignore_eos=True).tokens)
    good = write_random_eagle3(tmp_path / "frequent.gguf", tiny_target_gguf, layers=[0, 1, 1],
                               d2t=sorted(t for t, _ in counts.most_common(2)), seed=3)
    accepted = 0
    with ppow.Generator(tiny_target_gguf, n_ctx=512, n_threads=1) as plain, \
            ppow.Generator(tiny_target_gguf, good, n_ctx=512, n_threads=1) as g:
        for prompt in PROMPTS * 3:
            ref = plain.generate(prompt, n_predict=40, ignore_eos=True)
            for policy, k in (("auto", 4), ("fixed", 3), ("auto", 8)):
                out = g.generate(prompt, n_predict=40, ignore_eos=True, draft_policy=policy, draft_max=k)
                assert out.tokens == ref.tokens, (prompt, policy, k)
                assert out.stats.exact
                accepted += out.stats.n_accepted
    assert accepted > 0


def test_model_drafter_bounded_catch_up_stays_exact(tiny_target_gguf, tiny_drafter_gguf):
    # A long history: the standalone drafter restarts from its latest kMaxCatchup tokens when it has
    # fallen further behind (here: a prompt longer than that) and output stays plain's.
    with ppow.Generator(tiny_target_gguf, n_ctx=1024, n_threads=1) as plain, \
            ppow.Generator(tiny_target_gguf, tiny_drafter_gguf, n_ctx=1024, n_threads=1) as g:
        long = plain.tokenize("The quick brown fox jumps over the lazy dog. " * 40)
        assert len(long) > 300
        ref = plain.generate(long, n_predict=32, ignore_eos=True)
        out = g.generate(long, n_predict=32, ignore_eos=True, draft_max=4)
        assert out.tokens == ref.tokens
        assert out.stats.n_draft_catchup >= 256  # the first window took in the latest 256 tokens
        assert out.stats.n_drafted > 0


# Prompt lookup's windows under auto. A 2-row verify at 1.6x a plain step (SmolLM2-135M on the 2-core
# EPYC) needs a first-token acceptance above 0.6 before a one-token lookup window pays.
EPYC_SMOLLM2 = {n: 1.0 + 0.6 * (n - 1) ** 0.7 for n in range(1, 10)}


def lookup_costs():
    c = _core.CostModel()
    c.calibrate(list(EPYC_SMOLLM2), lambda n: EPYC_SMOLLM2[n])
    return c


def test_lookup_prior_is_neutral_where_a_window_costs_more_than_it_is_likely_to_bring():
    # No evidence yet: acceptance 1/2 at every position, below what a window needs here, so lookup
    # waits for evidence (the engine gets it free from the drafts it declines) instead of paying for it.
    c = lookup_costs()
    assert c.best_lookup_window(0, 4) == (0, 1.0)
    cheap = _core.CostModel()  # where a 2-row verify costs 1.05x a plain step, 1/2 already pays
    cheap.calibrate([1, 2, 3], lambda n: {1: 1.0, 2: 1.05, 3: 1.1}[n])
    k, gain = cheap.best_lookup_window(0, 2)
    assert k >= 1 and gain > 1.0


def test_lookup_windows_follow_the_evidence_per_key():
    c = lookup_costs()
    for _ in range(20):  # matches that agree 9+ tokens back (key 4): nine in ten accepted everywhere
        for pos in range(4):
            c.observe_lookup(4, pos, pos < 3 or _ % 10 != 0)
    for i in range(20):  # one-token matches (key 0): three in ten at the first position
        c.observe_lookup(0, 0, i % 10 < 3)
    k4, gain4 = c.best_lookup_window(4, 4)
    assert k4 == 4 and gain4 > 1.5
    assert c.best_lookup_window(0, 4)[0] == 0
    # Each generation starts with the earlier evidence scaled down: a new generation's own evidence
    # soon outweighs it (here: one-token matches that now repeat).
    c.decay_lookup(0.5)
    for _ in range(12):
        c.observe_lookup(0, 0, True)
        c.observe_lookup(0, 1, True)
    assert c.best_lookup_window(0, 2)[0] >= 1
    # Keys outside the table are ignored, never drafted from.
    c.observe_lookup(5, 0, True)
    assert c.best_lookup_window(5, 4) == (0, 1.0) and c.best_lookup_window(-1, 4) == (0, 1.0)
