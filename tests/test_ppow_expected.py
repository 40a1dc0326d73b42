"""PPOW's expected estimator (python/ppow/train/expected.py), CPU, tiny drafters.

- its rewards AND their gradients equal brute-force enumeration over every drafted window of a 5-token
  draft vocabulary (the sampled reward definitions of rewards.py, averaged with the drafts' probabilities);
- its gradient equals the sampled estimator's mean REINFORCE gradient (no clip, no group normalisation)
  within Monte-Carlo error, the error shrinking like 1/sqrt(G);
- the one-pass windows (every window start of a chunk) equal window-by-window teacher-forced passes;
- `ppow-train ppow --estimator expected` trains both drafter kinds on the fixture caches, with both anchors;
- the target anchor moves the drafter toward the target's distribution, the reference anchor toward the start;
- a training step raises the expected reward of the windows it read.
"""

import json
import math
import os

import pytest

torch = pytest.importorskip("torch")

import train_fixtures as F  # noqa: E402

from ppow.train import checkpoint as C  # noqa: E402
from ppow.train import cli, drafters  # noqa: E402
from ppow.train import expected as X  # noqa: E402
from ppow.train import feature_model as FM  # noqa: E402
from ppow.train import model as M  # noqa: E402
from ppow.train import rewards as R  # noqa: E402
from ppow.train.common import step_generator  # noqa: E402

V, K, TOPK = 5, 3, 3
# the H200 profile of Gemma 3 270M (feature drafter: catch-up per committed position) and a CPU-like one
COSTS = {"feature": R.CostModel({1: 1.22, 2: 1.35, 3: 1.48, 4: 1.58}, 0.22, 0.26),
         "standalone": R.CostModel({1: 10.0, 2: 11.9, 4: 16.0}, 0.8)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(kind, seed=0):
    """A random drafter over a 5-token draft vocabulary and three contexts of different lengths."""
    torch.manual_seed(seed)
    if kind == "standalone":
        m = M.Drafter(M.make_config(vocab_size=V, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                    num_key_value_heads=2, initializer_range=0.5))
        ctx = [torch.randint(V, (n,)) for n in (3, 5, 2)]
    else:
        m = FM.FeatureDrafter(FM.make_config(hidden_size=16, target_hidden_size=16, target_layers=[0, 1, 1],
                                             target_vocab_size=7, draft_vocab_size=V, num_attention_heads=2,
                                             num_key_value_heads=1, intermediate_size=32, initializer_range=0.5))
        m.set_embeddings(torch.randn(7, 16))
        m.set_d2t(torch.tensor([0, 2, 3, 5, 6]))
        ctx = [(torch.randn(n, 48), torch.randint(7, (n,))) for n in (3, 5, 2)]
    return m.eval(), ctx


def windows(seed=1):
    """Trajectories (one position outside the draft vocabulary), window lengths, target top-k."""
    g = torch.Generator().manual_seed(seed)
    traj = torch.randint(V, (3, K), generator=g)
    traj[2, 1] = -100
    k = torch.tensor([3, 2, 3])
    p_ids = torch.stack([torch.randperm(V, generator=g)[:TOPK] for _ in range(3 * K)]).view(3, K, TOPK)
    p = torch.rand(3, K, TOPK, generator=g)
    p = p / p.sum(-1, keepdim=True) * 0.9
    p[0, 1, 2] = 0  # a top-k entry outside the draft vocabulary
    return traj, k, p_ids, p


def expected_of(m, ctx, traj, k, p_ids, p, cost, temperature=1.0, **kw):
    fw = drafters.of(m).forward_windows
    lg = fw(m, ctx, traj.clamp_min(0))
    log_s = torch.log_softmax(lg / temperature, -1).gather(-1, traj.clamp_min(0)[..., None]).squeeze(-1)
    log_s = torch.where(traj >= 0, log_s, torch.full_like(log_s, X.NEG))
    q_at = torch.softmax(lg, -1).gather(-1, p_ids) * (p > 0)
    return X.expected_window_rewards(log_s, q_at, p, k, cost, **kw)


def brute_force(m, ctx, traj, k, p_ids, p, cost, temperature=1.0, detach_reward=False, **kw):
    """Every sequence of K draft tokens with its probability under the drafter's sampling, verified
    greedily against the trajectory, rewarded by rewards.window_rewards; probability-weighted sums."""
    fw = drafters.of(m).forward_windows
    D = torch.cartesian_prod(*[torch.arange(V)] * K)  # [V^K, K]
    out = {"total": [], "speed": [], "prox": []}
    for b in range(len(ctx)):
        lg = fw(m, [ctx[b]] * len(D), D)
        logp = torch.log_softmax(lg / temperature, -1).gather(-1, D[..., None]).squeeze(-1).sum(1)
        q_at = torch.softmax(lg, -1).gather(-1, p_ids[b].expand(len(D), K, TOPK)) * (p[b] > 0)
        if detach_reward:
            q_at = q_at.detach()
        kb = k[b].expand(len(D))
        a = R.accepted_length(D, traj[b].expand(len(D), K), kb)
        total, parts = R.window_rewards(a, kb, p[b].expand(len(D), K, TOPK), q_at, cost, **kw)
        w = logp.exp()
        for key, val in (("total", total), ("speed", parts["speed"]), ("prox", parts["prox"])):
            out[key].append((w * val).sum())
    return {key: torch.stack(v) for key, v in out.items()}


def grads(m, loss):
    m.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([q.grad.flatten() for q in m.parameters() if q.grad is not None])


# ----------------------------------------------------------------------------------- (a) exact


@pytest.mark.parametrize("kind", ["standalone", "feature"])
@pytest.mark.parametrize("temperature,speedup", [(1.0, True), (0.7, True), (1.0, False)])
def test_expected_rewards_equal_brute_force_enumeration(kind, temperature, speedup):
    m, ctx = tiny(kind)
    traj, k, p_ids, p = windows()
    cost = COSTS[kind]
    kw = dict(speedup=speedup, proximity_coef=0.5)
    tot, parts = expected_of(m, ctx, traj, k, p_ids, p, cost, temperature, **kw)
    bf = brute_force(m, ctx, traj, k, p_ids, p, cost, temperature, **kw)
    torch.testing.assert_close(parts["speed"], bf["speed"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["prox"], bf["prox"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tot, bf["total"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["P_a"].sum(1), torch.ones(3))
    assert float(parts["P_a"][1, 3].detach()) == 0.0  # a <= k (window 1 has k = 2)
    # non-trivial: windows differ and the proximity part matters
    assert float(parts["speed"].detach().std()) > 1e-3 and float(parts["prox"].detach().min()) > 0.01
    # gradients: "full" is the gradient of the exact expectation (rewards differentiated too),
    # "score" the gradient with the rewards held fixed
    for prox_grad, detach in (("full", False), ("score", True)):
        g_e = grads(m, expected_of(m, ctx, traj, k, p_ids, p, cost, temperature, prox_grad=prox_grad, **kw)[0].sum())
        g_b = grads(m, brute_force(m, ctx, traj, k, p_ids, p, cost, temperature, detach, **kw)["total"].sum())
        torch.testing.assert_close(g_e, g_b, rtol=1e-4, atol=1e-5 * float(g_b.abs().max()))
    g_full = grads(m, expected_of(m, ctx, traj, k, p_ids, p, cost, temperature, prox_grad="full", **kw)[0].sum())
    assert (g_full - g_e).norm() > 1e-3 * g_full.norm()  # the flag changes the gradient


def test_acceptance_distribution_hand_values():
    s = torch.tensor([[0.5, 0.4, 0.9], [0.5, 0.4, 0.9]])
    P = X.acceptance_distribution(s.log(), torch.tensor([3, 2]))
    torch.testing.assert_close(P[0], torch.tensor([0.5, 0.5 * 0.6, 0.2 * 0.1, 0.18]))
    torch.testing.assert_close(P[1], torch.tensor([0.5, 0.3, 0.2, 0.0]))
    m = X.prefix_means(torch.tensor([[1.0, 0.5, 0.0]]), torch.tensor([2]))
    torch.testing.assert_close(m, torch.tensor([[1.0, 0.75, 0.75, 0.75]]))


# ----------------------------------------------------------------------------------- (b) vs sampled


@pytest.mark.parametrize("kind", ["standalone", "feature"])
def test_expected_gradient_is_the_sampled_estimators_mean_gradient(kind):
    """REINFORCE on the decisive positions (what --estimator sampled's PPO loss is with ratio 1, no clip,
    no group normalisation) averaged over G sampled windows per start -> the expected estimator's
    gradient with the rewards held fixed (--prox-grad score), within Monte-Carlo error. The sampled
    windows come from the rollouts' own drafting and reward code (kind.draft, rewards.window_rewards)."""
    m, ctx = tiny(kind, seed=3)
    traj, k, p_ids, p = windows(seed=4)
    kind_ = drafters.of(m)
    traj[:2] = kind_.draft(m, ctx[:2], K)[0]  # windows the drafter often accepts (and the random third)
    traj[1, 2] = (traj[1, 2] + 1) % V
    cost, temp = COSTS[kind], 0.9
    g_exp = grads(m, -expected_of(m, ctx, traj, k, p_ids, p, cost, temp, prox_grad="score")[0].mean())
    gen = torch.Generator().manual_seed(0)

    def sample(n):
        ctx_g = [c for c in ctx for _ in range(n)]
        rep = lambda x: x.repeat_interleave(n, 0)  # noqa: E731
        toks, _, q_at = kind_.draft(m, ctx_g, K, greedy=False, temperature=temp, generator=gen, gather_ids=rep(p_ids))
        a = R.accepted_length(toks, rep(traj), rep(k))
        r, parts = R.window_rewards(a, rep(k), rep(p), q_at * (rep(p) > 0), cost)
        return ctx_g, toks, r.view(len(ctx), n), parts["decisive"]

    # a constant baseline per start from an independent pilot batch keeps the estimator unbiased
    base = sample(256)[2].mean(1)
    n_sub, sub = 16, 256  # 4,096 sampled windows per start, in 16 batches of 256
    g_sub = []
    for _ in range(n_sub):
        ctx_g, toks, r, decisive = sample(sub)
        adv = (r - base[:, None]).flatten()
        logp = torch.log_softmax(kind_.forward_windows(m, ctx_g, toks) / temp, -1).gather(-1, toks[..., None])
        g_sub.append(grads(m, -(adv[:, None] * logp.squeeze(-1) * decisive).sum() / len(adv)))
    g_sub = torch.stack(g_sub)

    def rel(G):
        g = g_sub[:G // sub].mean(0)
        return float((g - g_exp).norm() / g_exp.norm()), float(torch.nn.functional.cosine_similarity(g, g_exp, 0))

    (r1, c1), (r4, c4), (r16, c16) = rel(256), rel(1024), rel(4096)
    print(f"{kind}: relative error / cosine at G=256 {r1:.3f}/{c1:.4f}, 1024 {r4:.3f}/{c4:.4f}, 4096 {r16:.3f}/{c16:.4f}")
    # within Monte-Carlo error: the standard error of the 4,096-sample mean from its 16 batch means
    se = g_sub.std(0) / math.sqrt(n_sub)
    err = (g_sub.mean(0) - g_exp).norm()
    assert err < 3 * se.norm(), (float(err), float(se.norm()))
    assert r16 < 0.5 * r1 and c1 < c4 < c16 and c16 > 0.98
    # and not trivially: the gradient is far from zero relative to the error
    assert r16 < 0.2


# ----------------------------------------------------------------------------------- one pass = windows


def _args(extra=()):
    a = cli.build_parser().parse_args(["ppow", "--cache", "x", "-o", "y", "--init", "z"] + list(extra))
    cli._fill_defaults(a)
    return a


@pytest.fixture(scope="module")
def standalone_work(tmp_path_factory):
    d = tmp_path_factory.mktemp("expected-standalone")
    cache = F.make_cache(d / "cache", 24, seed=1, max_new=24)
    cli.run(["kd", "--cache", str(d / "cache"), "-o", str(d / "kd"), "--hidden", "32", "--heads", "2",
             "--intermediate", "64", "--batch-size", "16", "--steps", "3", "--ctx-len", "12", "--quiet"])
    return dict(dir=d, cache=cache, kd=str(d / "kd" / "final"))


@pytest.fixture(scope="module")
def feature_work(tiny_target_gguf, tmp_path_factory):
    from test_feature_train import make_cache

    d = tmp_path_factory.mktemp("expected-feature")
    cache = make_cache(tiny_target_gguf, d / "cache", n=8, max_new=16)
    cli.run(["kd", "--cache", str(d / "cache"), "--target", tiny_target_gguf, "--drafter-kind", "feature",
             "--draft-vocab", "128", "--heads", "2", "--kv-heads", "1", "--intermediate", "96", "--batch-size", "4",
             "--steps", "3", "--threads", "1", "--quiet", "-o", str(d / "kd")])
    return dict(dir=d, cache=cache, kd=str(d / "kd" / "final"), target=tiny_target_gguf)


@pytest.mark.parametrize("kind", ["standalone", "feature"])
def test_one_pass_windows_equal_window_by_window_passes(kind, request):
    work = request.getfixturevalue(f"{kind}_work")
    with torch.no_grad():
        _one_pass_vs_windows(kind, work)


def _one_pass_vs_windows(kind, work):
    cache = work["cache"]
    m, vocab, _ = C.load_drafter(work["kd"])
    m.eval()
    Kw = 4
    args = _args(["--chunks", "3", "--chunk-len", "0" if kind == "feature" else "40", "--temperature", "0.8"])
    args.ctx_len = 0
    feature = kind == "feature"
    valid = X.valid_starts(cache, Kw, feature=feature)
    fn = X.feature_pass if feature else X.standalone_pass
    P, b, c, starts = fn(m, None, cache, vocab, valid, Kw, args, torch.Generator().manual_seed(0), "cpu")
    w = P.windows(b, c, Kw)
    assert len(starts) > 10 and bool(valid[starts].all())
    idx = starts[:, None] + torch.arange(Kw)
    traj = vocab.to_draft_label(cache.greedy[idx])
    if feature:  # the chunk is the whole sequence: every entry before the window, as at runtime
        ctx = [FM.make_context(cache, int(t)) for t in starts]
    else:  # a window sees its chunk up to its start
        first = {}
        for bb, t in zip(b.tolist(), starts.tolist()):
            first[bb] = min(first.get(bb, t), t)
        ctx = [vocab.to_draft_input(cache.tokens[first[bb]:t + 1]) for bb, t in zip(b.tolist(), starts.tolist())]
    lg = drafters.of(m).forward_windows(m, ctx, vocab.to_draft_input(cache.greedy[idx]))
    lq = torch.log_softmax(lg, -1)
    lq_lab = torch.where(traj >= 0, lq.gather(-1, traj.clamp_min(0)[..., None]).squeeze(-1), torch.tensor(X.NEG))
    torch.testing.assert_close(w["lq_lab"], lq_lab, atol=2e-4, rtol=1e-4)
    lt = torch.log_softmax(lg / 0.8, -1).gather(-1, traj.clamp_min(0)[..., None]).squeeze(-1)
    torch.testing.assert_close(w["log_s"], torch.where(traj >= 0, lt, torch.tensor(X.NEG)), atol=2e-4, rtol=1e-4)
    p_ids, p = vocab.project_topk(cache.topk_ids[idx], cache.topk_probs[idx])
    torch.testing.assert_close(w["p"], p)
    torch.testing.assert_close(w["lq_at"], lq.gather(-1, p_ids), atol=2e-4, rtol=1e-4)
    if feature:  # fewer unrolled steps (the chosen windows' longest k) read the same first steps
        batch = X.feature_batch(cache, vocab, valid, Kw, args, torch.Generator().manual_seed(0), "cpu")
        w2 = X.feature_forward(m, None, batch, 2, args).windows(batch["b"], batch["c"], 2)
        torch.testing.assert_close(w2["log_s"], w["log_s"][:, :2], atol=1e-5, rtol=1e-5)
        assert torch.equal(batch["starts"], starts)


# ----------------------------------------------------------------------------------- (c) CLI, (d) anchors


@pytest.mark.parametrize("kind", ["standalone", "feature"])
def test_cli_expected_trains_both_kinds_with_both_anchors(kind, request, tmp_path):
    work = request.getfixturevalue(f"{kind}_work")
    extra = ["--target", work["target"], "--chunks", "2"] if kind == "feature" else ["--chunks", "4"]
    for anchor in ("target", "reference"):
        out = tmp_path / anchor
        final = cli.run(["ppow", "--cache", str(work["dir"] / "cache"), "--init", work["kd"], "--steps", "3",
                         "--estimator", "expected", "--anchor", anchor, "--k-min", "1", "--k-max", "4",
                         "--window-keep", "0.5", "--threads", "1", "--quiet", "-o", str(out), *extra])
        m, _, info = C.load_drafter(final)
        assert m.kind == kind and info["args"]["estimator"] == "expected" and info["args"]["anchor"] == anchor
        rows = [json.loads(x) for x in open(out / "metrics.jsonl")]
        assert len(rows) == 3
        assert {"reward", "r_speed", "r_prox", "accepted", "k_mean", "windows", "grad_norm"} <= set(rows[0])
        key = "kl_target" if anchor == "target" else "kl_ref"
        assert key in rows[0] and all(math.isfinite(r[key]) for r in rows)
        assert all(r["windows"] >= 1 and 1 <= r["k_mean"] <= 4 and 0 <= r["accepted"] <= r["k_mean"] for r in rows)
        assert os.path.exists(out / "final" / "model.safetensors")
    # the anchor decides what the loss reads: reference and target runs differ
    a = C.load_drafter(str(tmp_path / "target" / "final"))[0].state_dict()
    b = C.load_drafter(str(tmp_path / "reference" / "final"))[0].state_dict()
    assert any(not torch.equal(a[n], b[n]) for n in a)


def test_cli_sampled_estimator_with_target_anchor(standalone_work, tmp_path):
    final = cli.run(["ppow", "--cache", str(standalone_work["dir"] / "cache"), "--init", standalone_work["kd"],
                     "--steps", "2", "--estimator", "sampled", "--anchor", "target", "--windows", "4",
                     "--group-size", "2", "--k-max", "4", "--threads", "1", "--quiet", "-o", str(tmp_path)])
    rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert "kl_target" in rows[0] and "kl_ref" not in rows[0] and os.path.exists(final)
    with pytest.raises(ValueError, match="--estimator sampled"):
        cli.run(["ppow", "--cache", str(standalone_work["dir"] / "cache"), "--init", standalone_work["kd"],
                 "--steps", "1", "--exact-target", "--verify", "sampled", "--quiet", "-o", str(tmp_path / "x")])


class _SGD:
    """A stand-in for loop.Trainer: one plain gradient step per update."""

    def __init__(self, model, lr):
        self.ddp, self.device, self.model, self.lr = model, "cpu", model, lr

    def update(self, loss):
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for q in self.model.parameters():
                if q.grad is not None:
                    q -= self.lr * q.grad
        return 0.0


def _anchor_kls(m, ref, cache, vocab, args):
    """KL(target || drafter) and KL(drafter || ref) on the windows of the step-0 pass."""
    valid = X.valid_starts(cache, args.k_max)
    with torch.no_grad():
        P, b, c, _ = X.standalone_pass(m, ref, cache, vocab, valid, args.k_max, args, step_generator(args.seed, 0), "cpu")
        w = P.windows(b, c, args.k_max)
        mask = torch.ones(w["p"].shape[:2], dtype=torch.bool)
        return float(X.target_kl(w["lq_at"], w["p"], mask)), float(w["kl_ref"].mean())


def test_target_anchor_pulls_toward_the_target_reference_toward_the_start(standalone_work):
    """With the rewards off, one gradient step of the target anchor lowers KL(target || drafter) on the
    windows' positions; one step of the reference anchor lowers KL(drafter || start) instead."""
    cache = standalone_work["cache"]
    for anchor in ("target", "reference"):
        m, vocab, _ = C.load_drafter(standalone_work["kd"])
        ref, _, _ = C.load_drafter(standalone_work["kd"])
        torch.manual_seed(0)
        with torch.no_grad():  # move away from the start so the reference anchor has something to pull
            for q in m.parameters():
                q.add_(torch.randn_like(q) * 0.05)
        args = _args(["--anchor", anchor, "--speedup-coef", "0", "--proximity-coef", "0", "--kl-coef", "1",
                      "--chunks", "6", "--k-max", "4", "--k-min", "1", "--no-adaptive-window", "--k", "4"])
        args.ctx_len = 12
        before = _anchor_kls(m, ref, cache, vocab, args)
        step = X.make_step_fn(m, ref, cache, vocab, args, COSTS["standalone"])
        met = step(_SGD(m, 0.5), 0)
        after = _anchor_kls(m, ref, cache, vocab, args)
        if anchor == "target":
            assert after[0] < before[0] - 1e-3, (before, after)
            assert float(met["kl_target"]) == pytest.approx(before[0], rel=1e-4)
        else:
            assert after[1] < before[1] - 1e-4, (before, after)
            assert float(met["kl_ref"]) == pytest.approx(before[1], rel=1e-4)


def test_expected_step_raises_the_expected_reward_of_its_windows(standalone_work):
    """One gradient step of the training step (rewards only, both --adv-norm forms) raises the mean
    expected reward of the windows it read: the loss has the right sign and reaches the drafter."""
    cache, cost = standalone_work["cache"], COSTS["standalone"]
    for norm in ("none", "std"):
        m, vocab, _ = C.load_drafter(standalone_work["kd"])
        args = _args(["--kl-coef", "0", "--chunks", "6", "--k-max", "4", "--no-adaptive-window", "--k", "4",
                      "--adv-norm", norm])
        args.ctx_len = 12

        def mean_reward():
            with torch.no_grad():
                valid = X.valid_starts(cache, 4)
                P, b, c, _ = X.standalone_pass(m, None, cache, vocab, valid, 4, args, step_generator(args.seed, 0), "cpu")
                w = P.windows(b, c, 4)
                k = torch.full((len(b),), 4)
                return float(X.expected_window_rewards(w["log_s"], w["lq_at"].exp() * (w["p"] > 0), w["p"], k, cost)[0].mean())

        before = mean_reward()
        met = X.make_step_fn(m, None, cache, vocab, args, cost)(_SGD(m, 1.0), 0)
        assert float(met["reward"]) == pytest.approx(before, rel=1e-5)
        after = mean_reward()
        assert after > before * (1 + 1e-3), (norm, before, after)


def test_packaged_h200_cost_profile(tmp_path):
    c = R.CostModel.from_json("h200-gemma3-270m")
    assert c.target(1) == 1.22 and c.target(9) == 2.78 and c.draft_ms == 0.22 and c.catchup_ms == 0.26
    assert R.CostModel.from_json(R.profile_path("h200-gemma3-270m")).to_dict() == c.to_dict()
    with pytest.raises(FileNotFoundError, match="h200-gemma3-270m"):
        R.CostModel.from_json("no-such-profile")
    bad = tmp_path / "bad.json"
    bad.write_text('{"target_ms": 3}')
    with pytest.raises(ValueError, match="needs"):
        R.CostModel.from_json(str(bad))
    args = _args(["--cost-profile", "h200-gemma3-270m"])
    from ppow.train import ppow
    assert ppow.cost_from_args(args).to_dict() == c.to_dict()


# ----------------------------------------------------------------------------------- tools/objective-weights.py


def _objective_weights():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("objective_weights", Path(__file__).parents[1] / "tools" / "objective-weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_objective_weights_reads_each_objectives_gradient_where_its_loss_puts_it(feature_work, tmp_path):
    # The diagnostic behind the issue-23 cause: the PPOW step's gradient lands on exactly the windows'
    # positions (one per window at k = 1, at most k per window and on k unrolled steps otherwise) and
    # KD's on its unrolled steps; shares are shares.
    ow = _objective_weights()
    common = ["--init", feature_work["kd"], "--cache", str(feature_work["dir"] / "cache"), "--target", feature_work["target"],
              "--cost-profile", "h200-gemma3-270m", "--batches", "2", "--threads", "1",
              "--kd-args", "--ttt-steps 3 --batch-size 4 --chunk-len 0"]
    one = ow.main(common + ["--ppow-args", "--no-adaptive-window --k 1 --chunks 2 --chunk-len 0 --kl-coef 0 --no-proximity",
                            "-o", str(tmp_path / "k1.json")])
    for b in one["batches"]:
        pp, kd = b["ppow_expected"], b["kd"]
        assert pp["positions"] == pp["windows"] > 0 and pp["grad_share_by_step"] == [1.0]
        assert len(kd["grad_share_by_step"]) == 3 and sum(kd["grad_share_by_step"]) == pytest.approx(1.0, abs=1e-3)
        for d in (pp, kd):
            assert 0.0 <= d["grad_share_on_misses"] <= 1.0 and 0.0 < d["grad_weighted_mean_s"] < 1.0
        assert -1.0 <= b["cosine_ppow_vs_kd_same_chunks"] <= 1.0
    assert json.load(open(tmp_path / "k1.json"))["mean"]["ppow_expected"] == one["mean"]["ppow_expected"]
    three = ow.main(common + ["--ppow-args", "--no-adaptive-window --k 3 --chunks 2 --chunk-len 0"])
    for b in three["batches"]:
        pp = b["ppow_expected"]
        assert pp["windows"] < pp["positions"] <= 3 * pp["windows"] and len(pp["grad_share_by_step"]) == 3
