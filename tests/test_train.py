"""Trainer tests (CPU, about a minute): rewards and windowing against hand-computed values, the drafter
against transformers, the cache, ablation switches, resume, and PPOW vs continued KD on a tiny target
with planted hard-to-draft positions (tests/train_fixtures.py explains the construction)."""

import json
import math
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import train_fixtures as F  # noqa: E402

from ppow.train import checkpoint as C  # noqa: E402
from ppow.train import cli, drafters, kd, ppow  # noqa: E402
from ppow.train import evaluate as E  # noqa: E402
from ppow.train import model as M  # noqa: E402
from ppow.train import rewards as R  # noqa: E402
from ppow.train import windowing as W  # noqa: E402
from ppow.train.cache import Cache, TargetMismatch, build_cache  # noqa: E402
from ppow.train.common import NonFiniteError  # noqa: E402
from ppow.train.vocab import load_draft_vocab  # noqa: E402

COMMON = ["--ctx-len", str(F.CTX), "--quiet", "--seed", "0"]
KD_ARGS = ["--hidden", "32", "--heads", "2", "--intermediate", "64", "--batch-size", "128", "--lr", "1e-2"]
PPOW_ARGS = ["--lr", "1e-3", "--windows", "32", "--warmup", "5"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    train = F.make_cache(d / "train", 200, seed=1)
    heldout = F.make_cache(d / "heldout", 60, seed=2)
    cli.run(["kd", "--cache", str(d / "train"), "-o", str(d / "kd"), *KD_ARGS, "--steps", "500", "--warmup", "20",
              *COMMON])
    return dict(dir=d, train=train, heldout=heldout, kd=str(d / "kd" / "final"))


def tau(ckpt, cache, k=8):
    m, v, _ = C.load_drafter(ckpt)
    return E.tau(m, v, cache, k, ctx_len=F.CTX)


def args_for(stage, extra=()):
    a = cli.build_parser().parse_args([stage, "--cache", "x", "-o", "y"] + (["--init", "z"] if stage == "ppow" else [])
                                      + list(extra))
    cli._fill_defaults(a)
    a.ctx_len = F.CTX
    return a


# ----------------------------------------------------------------------------------------------- rewards


def test_cost_model_and_speedup_reward_hand_values():
    cost = R.CostModel({"1": 10.0, "2": 12.0, "5": 20.0}, draft_ms=1.0)
    assert cost.target(3) == pytest.approx(12 + 8 / 3)  # interpolated between n=2 and n=5
    assert cost.target(7) == pytest.approx(20 + 2 * 8 / 3)  # extrapolated with the last slope
    a, k = torch.tensor([2, 0, 4]), torch.tensor([4, 4, 4])
    # (a+1) * T(1) / (T(k+1) + k T_d) = (a+1) * 10 / (20 + 4)
    assert R.speedup_reward(a, k, cost).tolist() == pytest.approx([30 / 24, 10 / 24, 50 / 24])
    r = R.speedup_reward(torch.tensor([1]), torch.tensor([1]), cost)  # k=1: 2 * 10 / (12 + 1)
    assert float(r) == pytest.approx(20 / 13)


def test_feature_drafter_cost_counts_the_catch_up(tmp_path):
    """A feature drafter's window: T(k+1) + (k-1) T_d + (a+1) T_c, as the engine's cost model counts it."""
    path = tmp_path / "cost.json"
    path.write_text(json.dumps({"target_ms": {"1": 10.0, "2": 12.0, "5": 20.0}, "draft_ms": 1.0, "catchup_ms": 0.5}))
    cost = R.CostModel.from_json(str(path))
    a, k = torch.tensor([2, 0, 4]), torch.tensor([4, 4, 4])
    # (a+1) * 10 / (20 + 3 * 1 + (a+1) * 0.5)
    want = [3 * 10 / (23 + 1.5), 10 / (23 + 0.5), 5 * 10 / (23 + 2.5)]
    assert R.speedup_reward(a, k, cost).tolist() == pytest.approx(want)
    assert cost.to_dict()["catchup_ms"] == 0.5
    # expected speedup picks k: a drafter sure of 2 tokens and lost after them drafts 2 here
    s = torch.tensor([[0.99, 0.99, 0.01, 0.01, 0.01]])
    assert W.adaptive_k(s, 1, 5, "speedup", cost).tolist() == [2]


def test_accepted_length_and_decisive_positions():
    draft = torch.tensor([[5, 6, 7, 8], [5, 9, 7, 8], [1, 6, 7, 8], [5, 6, 7, 8]])
    tgt = torch.tensor([[5, 6, 7, 8]] * 4)
    k = torch.tensor([4, 4, 4, 2])
    a = R.accepted_length(draft, tgt, k)
    assert a.tolist() == [4, 1, 0, 2]
    m = R.decisive_mask(a, k, 4)
    assert m.int().tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]


def test_proximity_reward_hand_values():
    p = torch.tensor([[[0.7, 0.2], [0.5, 0.5], [0.9, 0.1]]])  # [B=1, K=3 positions, top-2]
    q = torch.tensor([[[0.6, 0.3], [0.1, 0.2], [0.0, 1.0]]])
    # overlaps: 0.6+0.2=0.8 ; 0.1+0.2=0.3 ; 0+0.1=0.1
    mask = torch.tensor([[True, True, False]])
    assert float(R.proximity_reward(p, q, mask)) == pytest.approx((0.8 + 0.3) / 2)
    assert float(R.proximity_reward(p, q, torch.tensor([[True, False, False]]))) == pytest.approx(0.8)


def test_window_rewards_combination_hand():
    cost = R.CostModel({"1": 1.0, "2": 1.5}, draft_ms=0.25)  # T(n) = 1 + 0.5 (n-1)
    a, k = torch.tensor([1]), torch.tensor([2])
    p = torch.tensor([[[1.0], [1.0]]])
    q = torch.tensor([[[0.5], [0.25]]])
    total, parts = R.window_rewards(a, k, p, q, cost, speedup_coef=2.0, proximity_coef=0.5)
    speed = 2 * 1.0 / (2.0 + 2 * 0.25)  # (a+1) T(1) / (T(3) + 2 T_d) = 2 / 2.5
    prox = (0.5 + 0.25) / 2  # decisive: both positions (accepted one, rejected the second)
    assert float(parts["speed"]) == pytest.approx(speed)
    assert float(parts["prox"]) == pytest.approx(prox)
    assert float(total) == pytest.approx(2.0 * speed + 0.5 * prox)


def test_group_advantages_hand():
    r = torch.tensor([1.0, 3.0, 2.0, 2.0])
    assert R.group_advantages(r, 2, "none").tolist() == pytest.approx([-1, 1, 0, 0])
    assert R.group_advantages(r, 2, "std").tolist() == pytest.approx([-1, 1, 0, 0], abs=1e-5)
    assert R.group_advantages(torch.tensor([0.0, 4.0]), 2, "std").tolist() == pytest.approx([-1, 1], abs=1e-5)


# ----------------------------------------------------------------------------------------------- windowing


def test_window_score_hand_values():
    p = torch.tensor([[[0.8, 0.1], [0.5, 0.4], [0.9, 0.1]]])  # top-k sorted descending
    q = torch.tensor([[[0.2, 0.1], [0.5, 0.4], [0.0, 0.0]]])
    # position 0: pmax 0.8, D = 1 - (0.2 + 0.1) = 0.7 -> 0.56 ; position 1: D = 1 - 0.9 = 0.1 -> 0.05
    assert float(W.window_score(p, q, m=2)) == pytest.approx((0.56 + 0.05) / 2)
    assert float(W.window_score(p, q, m=1)) == pytest.approx(0.56)
    sel = W.select_windows(torch.tensor([0.1, 0.5, 0.3, 0.5]), keep_frac=0.5)
    assert sel.tolist() == [1, 3]


def test_adaptive_k_hand_values():
    s = torch.tensor([[0.9, 0.5, 0.1, 0.1], [0.2, 0.9, 0.9, 0.9]])
    ea = W.expected_accepted(s)
    assert ea[0].tolist() == pytest.approx([0.9, 0.9 + 0.45, 0.9 + 0.45 + 0.045, 0.9 + 0.45 + 0.045 + 0.0045])
    # "expected": ceil(E[a_kmax]) + 1, clipped: row0 ceil(1.3995)+1 = 3 ; row1 E = .2+.18+.162+.1458=.6878 -> 2
    assert W.adaptive_k(s, 1, 4, "expected").tolist() == [3, 2]
    # "speedup" with T(n) = n (verification as dear as decoding), T_d = 0: (E[a_k]+1)/(k+1), best k
    cost = R.CostModel({"1": 1.0, "2": 2.0}, draft_ms=0.0)
    # row0: k=1: 1.9/2=.95 k=2: 2.35/3=.783 -> 1 ; row1: k=1: 1.2/2=.6, k=2 1.38/3=.46 -> 1
    assert W.adaptive_k(s, 1, 4, "speedup", cost).tolist() == [1, 1]
    cheap = R.CostModel({"1": 1.0, "2": 1.0}, draft_ms=0.0)  # free verification: the longest window
    assert W.adaptive_k(s, 1, 4, "speedup", cheap).tolist() == [4, 4]


# ----------------------------------------------------------------------------------------------- model


def test_drafter_matches_transformers_llama():
    transformers = pytest.importorskip("transformers")
    cfg = M.make_config(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, rope_theta=500.0, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    ours = M.Drafter(cfg).eval()
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.3)
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in M.hf_config_dict(cfg).items()
                                         if k not in ("architectures", "torch_dtype")})
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    missing = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not missing.unexpected_keys and all("rotary" in k for k in missing.missing_keys)
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        ref = hf(ids).logits
        got, _ = ours(ids)
        assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()
        # left padding + KV cache give the same last-token logits as an unpadded full pass
        ctx = [ids[0, :5], ids[1, :3]]
        toks, _ = M.draft(ours, ctx, 3, greedy=True)
        for b, c in enumerate(ctx):
            seq = c.tolist()
            for j in range(3):
                lg, _ = ours(torch.tensor([seq]))
                seq.append(int(lg[0, -1].argmax()))
            assert toks[b].tolist() == seq[-3:]


def test_embedding_init_from_target_pca():
    torch.manual_seed(0)
    # a target embedding that lives in 3 directions of a 16-dim space
    basis = torch.linalg.qr(torch.randn(16, 3))[0]
    emb = torch.randn(40, 3) * torch.tensor([5.0, 2.0, 1.0]) @ basis.T
    cfg = M.make_config(vocab_size=20, hidden_size=8, intermediate_size=16, num_attention_heads=2,
                        num_key_value_heads=2)
    m = M.Drafter(cfg)
    d2t = torch.arange(0, 40, 2)
    kept = M.init_embeddings_from_matrix(m, emb, d2t)
    assert kept == pytest.approx(1.0, abs=1e-5)
    e = m.model.embed_tokens.weight.detach()
    # pairwise geometry is kept up to scale: distances correlate perfectly with the target's
    src = emb[d2t] - emb[d2t].mean(0)
    d_src = torch.pdist(src)
    d_new = torch.pdist(e[:, :3])
    corr = torch.corrcoef(torch.stack([d_src, d_new]))[0, 1]
    assert corr > 0.999


# ----------------------------------------------------------------------------------------------- cache


def test_cache_records_target_and_refuses_another(tmp_path, work):
    other = F.make_target(identity="some-other-target")
    with pytest.raises(TargetMismatch):
        Cache(str(work["dir"] / "train"), expect_target_sha256=other.identity)
    with pytest.raises(TargetMismatch):  # resuming a data run with another target
        build_cache(other, str(work["dir"] / "train"), F.make_prompts(200, 1), max_new=40, prompt_tail=0, topk=8,
                    shard_size=64, progress=False)
    Cache(str(work["dir"] / "train"), expect_target_sha256=F.make_target().identity)  # the right one loads
    # a drafter trained on it refuses another target's cache at the next stage
    build_cache(other, str(tmp_path / "c2"), F.make_prompts(4, 9), max_new=8, prompt_tail=0, topk=4,
                progress=False)
    with pytest.raises(ValueError, match="another target"):
        cli.run(["ppow", "--cache", str(tmp_path / "c2"), "--init", work["kd"], "-o", str(tmp_path / "p"),
                  "--steps", "1", *COMMON])


def test_cache_contents_and_resume(tmp_path):
    t = F.make_target()
    prompts = F.make_prompts(10, 3)
    build_cache(t, str(tmp_path / "c"), prompts, max_new=12, prompt_tail=0, topk=4, shard_size=4, progress=False)
    c = Cache(str(tmp_path / "c"))
    assert len(c.seq_len) == 10 and c.topk == 4
    s0 = int(c.seq_len[0])
    assert s0 == len(prompts[0]["ids"]) + 12
    # greedy is the target's argmax and the continuation follows it
    lg = F.target_logits(c.tokens[:s0][None])[0]
    assert torch.equal(c.greedy[:s0], lg.argmax(-1))
    p0 = int(c.prompt_len[0])
    assert torch.equal(c.tokens[p0:s0], c.greedy[p0 - 1:s0 - 1])
    assert torch.allclose(c.topk_probs[:s0, 0], torch.softmax(lg, -1).max(-1).values, atol=1e-3)
    # resumable: remove the last shard and the meta's completion, rebuild, same result
    mtime0 = os.path.getmtime(tmp_path / "c" / "shard_00000.safetensors")
    os.remove(tmp_path / "c" / "shard_00002.safetensors")
    build_cache(t, str(tmp_path / "c"), prompts, max_new=12, prompt_tail=0, topk=4, shard_size=4, progress=False)
    assert os.path.getmtime(tmp_path / "c" / "shard_00000.safetensors") == mtime0  # kept, not redone
    c2 = Cache(str(tmp_path / "c"))
    assert torch.equal(c2.tokens, c.tokens) and torch.equal(c2.topk_ids, c.topk_ids)


def test_several_caches_train_as_one(tmp_path, work):
    t = F.make_target()
    build_cache(t, str(tmp_path / "a"), F.make_prompts(6, 3), max_new=8, prompt_tail=0, topk=4, progress=False)
    build_cache(t, str(tmp_path / "b"), F.make_prompts(4, 5), max_new=8, prompt_tail=0, topk=4, progress=False)
    a, b = Cache(str(tmp_path / "a")), Cache(str(tmp_path / "b"))
    ab = Cache([str(tmp_path / "a"), str(tmp_path / "b")])
    assert torch.equal(ab.tokens, torch.cat([a.tokens, b.tokens])) and len(ab.seq_len) == 10
    assert torch.equal(ab.seq_start[6:] - len(a), b.seq_start)  # the second cache's sequences start after the first's
    assert torch.equal(ab.run, torch.cat([a.run, b.run])) and ab.ids == a.ids + b.ids
    build_cache(t, str(tmp_path / "k8"), F.make_prompts(2, 7), max_new=8, prompt_tail=0, topk=8, progress=False)
    with pytest.raises(ValueError, match="topk 8 differ"):
        Cache([str(tmp_path / "a"), str(tmp_path / "k8")])
    other = F.make_target(identity="some-other-target")
    build_cache(other, str(tmp_path / "o"), F.make_prompts(2, 7), max_new=8, prompt_tail=0, topk=4, progress=False)
    with pytest.raises(ValueError, match="another target"):
        Cache([str(tmp_path / "a"), str(tmp_path / "o")])
    # the CLI takes --cache more than once
    final = cli.run(["kd", "--cache", str(tmp_path / "a"), "--cache", str(tmp_path / "b"), "-o", str(tmp_path / "kd"),
                     "--steps", "1", *KD_ARGS])
    assert os.path.isdir(final)


def test_cached_verification_equals_exact_target(work):
    """Greedy verification against the cache gives the same accepted length as running the target on
    context + drafted tokens (the cached-trajectory shortcut is exact under greedy verification)."""
    c = work["train"]
    m, v, _ = C.load_drafter(work["kd"])
    starts = c.window_starts(6)[::97][:24]
    contexts, traj, _, _, _ = ppow.window_data(c, v, starts, 6, F.CTX)
    toks, _ = M.draft(m, contexts, 6, greedy=False, generator=torch.Generator().manual_seed(0))
    toks[::3] = traj[::3]  # make some windows fully accepted
    a_cache = R.accepted_length(toks, traj, torch.full((len(starts),), 6))
    tgt = F.make_target()
    for i, t in enumerate(starts.tolist()):
        s = int(c.seq_start[c.seq_of[t]])
        seq = c.tokens[s:t + 1].tolist() + toks[i].tolist()
        greedy = tgt.logits(seq).argmax(-1)[t - s:t - s + 6]
        a = 0
        while a < 6 and int(toks[i, a]) == int(greedy[a]):
            a += 1
        assert a == int(a_cache[i])
    assert a_cache.max() == 6 and a_cache.min() < 6


def test_exact_target_rollouts_match_cached_and_sampled_verification_runs(work):
    _, _, _, _, cached = _rollout(work, ["--windows", "4"])
    _, _, _, _, exact = _rollout(work, ["--windows", "4", "--exact-target"], target=F.make_target())
    assert torch.equal(cached.toks, exact.toks) and torch.equal(cached.a, exact.a)
    assert torch.allclose(cached.reward, exact.reward, atol=2e-3)  # fp16 cache vs exact probs
    _, _, _, _, samp = _rollout(work, ["--windows", "4", "--exact-target", "--verify", "sampled"],
                                target=F.make_target())
    assert torch.equal(samp.toks, cached.toks)
    assert (samp.a >= 0).all() and (samp.a <= samp.k).all()
    assert not torch.equal(samp.a, cached.a)  # min(1, p/q) is another protocol than argmax matching
    with pytest.raises(ValueError, match="exact-target"):
        _rollout(work, ["--verify", "sampled"])


def test_draft_vocab_mapping_and_kd(tmp_path, work):
    out = tmp_path / "kdv"
    cli.run(["kd", "--cache", str(work["dir"] / "train"), "-o", str(out), *KD_ARGS, "--steps", "30", "--warmup", "5",
              "--draft-vocab", "20", *COMMON])
    m, v, info = C.load_drafter(str(out / "final"))
    assert v.size == 20 and m.cfg["vocab_size"] == 20
    d2t = load_draft_vocab(str(out / "final")).d2t
    assert d2t.dtype == torch.int64 and len(d2t) == 20
    assert d2t[:4].tolist() == [F.BOS, F.EOS, F.UNK, F.PAD]  # specials first
    counts = work["train"].token_counts(F.V)
    counts[[F.BOS, F.EOS, F.UNK, F.PAD]] = -1
    assert set(d2t[4:].tolist()) == set(torch.argsort(-counts, stable=True)[:16].tolist())
    outside = [t for t in range(F.V) if t not in d2t.tolist()][0]
    assert int(v.to_draft_input(torch.tensor([outside]))[0]) == v.unk_draft_id == 2
    assert int(v.to_draft_label(torch.tensor([outside]))[0]) == -100
    assert v.to_target(v.to_draft_input(d2t)).tolist() == d2t.tolist()
    assert json.load(open(out / "final" / "config.json"))["vocab_size"] == 20
    assert E.tau(m, v, work["heldout"], 4, F.CTX) > 1.5  # it drafts through the mapping


def test_kd_loss_hand_values():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    mask = torch.tensor([[True]])
    labels = torch.tensor([[0]])
    p_ids = torch.tensor([[[1, 0]]])
    p = torch.tensor([[[0.3, 0.1]]])  # renormalised: 0.75 on id 1, 0.25 on id 0
    loss, m = kd.kd_loss(logits, mask, labels, p_ids, p, ce_coef=1.0, kl_coef=2.0)
    ce = -math.log(0.5)
    kl = 0.75 * math.log(0.75 / 0.25) + 0.25 * math.log(0.25 / 0.5)
    assert float(m["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(m["kl"]) == pytest.approx(kl, rel=1e-5)
    assert float(loss) == pytest.approx(ce + 2 * kl, rel=1e-5)


# ----------------------------------------------------------------------------------------------- ablations


def _rollout(work, extra, seed=0, target=None):
    args = args_for("ppow", extra)
    m, v, _ = C.load_drafter(work["kd"])
    c = work["train"]
    cost = ppow.cost_from_args(args)
    K0 = args.k_max if args.adaptive_window else args.k
    all_starts = c.window_starts(K0)
    cand = all_starts[torch.randint(len(all_starts), (ppow.n_candidates(args),), generator=torch.Generator().manual_seed(seed))]
    starts, k, _ = ppow.choose_windows(m, c, v, cand, args, cost)
    ro = ppow.rollout(m, c, v, starts, k, args, cost, torch.Generator().manual_seed(seed), target)
    return args, m, starts, k, ro


def test_ablation_no_speedup_reward_changes_rewards(work):
    _, _, _, _, on = _rollout(work, [])
    _, _, _, _, off = _rollout(work, ["--no-speedup-reward"])
    assert torch.equal(on.a, off.a)  # same rollouts
    assert not torch.allclose(on.reward, off.reward)
    assert torch.allclose(off.r_speed, on.a.float() + 1)


def test_ablation_no_proximity_changes_rewards(work):
    _, _, _, _, on = _rollout(work, [])
    _, _, _, _, off = _rollout(work, ["--no-proximity"])
    assert torch.equal(on.a, off.a)
    assert torch.allclose(off.reward, off.r_speed)
    assert torch.allclose(on.reward, on.r_speed + 0.5 * on.r_prox)
    assert not torch.allclose(on.adv, off.adv)


def test_ablation_no_adaptive_window_changes_selection(work):
    args_on, _, s_on, k_on, _ = _rollout(work, [])
    args_off, _, s_off, k_off, _ = _rollout(work, ["--no-adaptive-window", "--k", "6"])
    assert (k_off == 6).all() and len(set(k_on.tolist())) > 1  # adaptive k varies per window
    assert s_on.tolist() != s_off.tolist()
    # the kept windows score higher than the candidates on average
    c, (m, v, _) = work["train"], C.load_drafter(work["kd"])
    cand = c.window_starts(8)[torch.randint(len(c.window_starts(8)), (64,), generator=torch.Generator().manual_seed(0))]
    ctx, traj, tin, pid, p = ppow.window_data(c, v, cand, 8, F.CTX)
    with torch.no_grad():
        q = torch.softmax(M.forward_windows(m, ctx, tin), -1)
    score = W.window_score(p, q.gather(-1, pid) * (p > 0), 2)
    kept = W.select_windows(score, 0.25)
    assert score[kept].mean() > 1.5 * score.mean()
    assert len(s_on) == len(s_off) == 16


def test_ablation_window_keep_and_adaptive_k_mode(work):
    _, _, s1, k1, _ = _rollout(work, ["--window-keep", "1.0"])
    _, _, s2, k2, _ = _rollout(work, [])
    assert s1.tolist() != s2.tolist()
    _, _, _, k3, _ = _rollout(work, ["--adaptive-k", "expected"])
    _, _, _, k4, _ = _rollout(work, ["--adaptive-k", "off"])
    assert not torch.equal(k3, k2) and (k4 == 8).all()


def _loss_and_grad(work, extra, ratio_shift=0.0):
    args, m, _, _, ro = _rollout(work, extra)
    ref, _, _ = C.load_drafter(work["kd"])
    torch.manual_seed(1)
    with torch.no_grad():  # move the policy away from the reference so KL and ratios are non-trivial
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        old = torch.log_softmax(M.forward_windows(m, ro.contexts, ro.toks), -1)
        old_logp = old.gather(-1, ro.toks[..., None]).squeeze(-1) + ratio_shift
        ref_logits = M.forward_windows(ref, ro.contexts, ro.toks)
    logits = M.forward_windows(m, ro.contexts, ro.toks)
    loss, met = ppow.ppo_loss(logits, old_logp, ref_logits, ro.toks, ro.adv, ro.mask, args.clip,
                              args.kl_coef, args.temperature)
    loss.backward()
    g = torch.cat([p.grad.flatten() for p in m.parameters()])
    return float(loss.detach()), g, met


def test_ablation_kl_coef_changes_gradient(work):
    l1, g1, m1 = _loss_and_grad(work, ["--kl-coef", "0.5"])
    l0, g0, m0 = _loss_and_grad(work, ["--kl-coef", "0"])
    assert float(m1["kl_ref"]) > 0 and l1 > l0
    assert (g1 - g0).norm() > 1e-3 * g0.norm()


def test_ablation_clip_changes_objective(work):
    # old log-probs shifted so ratios are exp(-0.5) = 0.61: outside [0.8, 1.2] -> clipping bites
    l_clip, g_clip, m = _loss_and_grad(work, ["--kl-coef", "0"], ratio_shift=0.5)
    l_off, g_off, _ = _loss_and_grad(work, ["--kl-coef", "0", "--clip", "0"], ratio_shift=0.5)
    assert float(m["clipfrac"]) > 0.9
    assert l_clip != pytest.approx(l_off)
    assert (g_clip - g_off).norm() > 1e-3 * g_off.norm()


def test_ablation_group_size_and_pg_positions(work):
    _, _, _, _, g8 = _rollout(work, [])
    _, _, _, _, g4 = _rollout(work, ["--group-size", "4"])
    assert len(g8.a) == 2 * len(g4.a)
    _, _, _, _, win = _rollout(work, ["--pg-positions", "window"])
    assert win.mask.sum() > g8.mask.sum()  # decisive positions are a subset of the window
    _, _, _, _, raw = _rollout(work, ["--adv-norm", "none"])
    assert not torch.allclose(raw.adv, g8.adv)


# ----------------------------------------------------------------------------------------------- training


def test_ppow_beats_continued_kd_on_planted_hard_positions(work):
    """PPOW from the KD drafter raises held-out tau by >= 0.5 over it and beats KD continued for the same
    number of steps. Candidate selection is off here (--window-keep 1.0; adaptive k stays on): on this
    target the confidence-weighted score prefers mode-B windows (target max-prob 0.92 vs 0.36), which biases
    the update toward Y_m - measured: the default keep 0.25 ends at the KD drafter's tau. The sampled
    estimator: the expected one (tests/test_ppow_expected.py) ends at continued KD's tau on this task
    (python/ppow/train/README.md, "the expected estimator")."""
    d = work["dir"]
    steps = "60"
    cli.run(["kd", "--cache", str(d / "train"), "-o", str(d / "kd_more"), "--init", work["kd"], "--steps", steps,
              "--batch-size", "128", "--lr", "1e-2", "--warmup", "5", *COMMON])
    cli.run(["ppow", "--cache", str(d / "train"), "-o", str(d / "ppow"), "--init", work["kd"], "--steps", steps,
              "--window-keep", "1.0", "--estimator", "sampled", "--anchor", "reference", *PPOW_ARGS, *COMMON])
    t_kd = tau(work["kd"], work["heldout"])
    t_more = tau(str(d / "kd_more" / "final"), work["heldout"])
    t_ppow = tau(str(d / "ppow" / "final"), work["heldout"])
    print(f"held-out tau (k=8): KD {t_kd:.3f}  KD+{steps} {t_more:.3f}  PPOW+{steps} {t_ppow:.3f}")
    assert t_ppow >= t_kd + 0.5
    assert t_ppow >= t_more + 0.1
    # the log has every metric, every step
    rows = [json.loads(x) for x in open(d / "ppow" / "metrics.jsonl")]
    assert len(rows) == int(steps) and {"reward", "r_speed", "r_prox", "kl_ref", "accepted", "k_mean"} <= set(rows[0])


@pytest.mark.parametrize("stage", ["kd", "ppow"])
def test_resume_after_kill_matches_uninterrupted(tmp_path, work, stage):
    d = work["dir"]
    if stage == "kd":
        base = ["kd", "--cache", str(d / "train"), *KD_ARGS, "--steps", "10", "--warmup", "3", *COMMON]
    else:
        base = ["ppow", "--cache", str(d / "train"), "--init", work["kd"], *PPOW_ARGS, "--steps", "6", *COMMON]
    cli.run(base + ["-o", str(tmp_path / "full")])
    cli.run(base + ["-o", str(tmp_path / "cut"), "--stop-after", "4", "--save-every", "2"])  # "killed" after 4
    assert not os.path.exists(tmp_path / "cut" / "final")
    cli.run(base + ["-o", str(tmp_path / "cut"), "--resume"])
    a, _, ia = C.load_drafter(str(tmp_path / "full" / "final"))
    b, _, ib = C.load_drafter(str(tmp_path / "cut" / "final"))
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), n
    assert ia["step"] == ib["step"]
    # a run resumed from the final state does nothing more
    rows = [json.loads(x) for x in open(tmp_path / "cut" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))


def test_cpu_budget_finishes_early_and_counts_across_resumes(tmp_path, work):
    """--cpu-budget: the run ends (OUT/final) once its steps used that many CPU-seconds, long before
    --steps; the count survives a resume."""
    base = ["kd", "--cache", str(work["dir"] / "train"), *KD_ARGS, "--steps", "100000", "--warmup", "3",
            "--schedule", "constant", "--cpu-budget", "1.5", *COMMON, "-o", str(tmp_path / "b")]
    cli.run(base + ["--stop-after", "2", "--save-every", "1"])  # "killed" early: no final yet
    assert not os.path.exists(tmp_path / "b" / "final")
    cli.run(base + ["--resume"])
    _, _, info = C.load_drafter(str(tmp_path / "b" / "final"))
    rows = [json.loads(x) for x in open(tmp_path / "b" / "metrics.jsonl")]
    assert 2 < info["step"] < 100000 and info["step"] == rows[-1]["step"]
    assert info["cpu_seconds"] >= 1.5 and rows[-2]["cpu_seconds"] <= 1.5  # stopped at the first step past it (2 decimals)
    assert all(b["cpu_seconds"] >= a["cpu_seconds"] for a, b in zip(rows, rows[1:]))  # carried across the resume


def test_nan_guard_stops_with_clear_error(tmp_path, work):
    c = work["train"]
    args = args_for("kd", ["--steps", "3"])
    args.out = str(tmp_path / "nan")
    m, v, _ = C.load_drafter(work["kd"])
    with torch.no_grad():
        m.lm_head.weight[0, 0] = float("nan")
    from ppow.train import loop

    with pytest.raises(NonFiniteError, match="non-finite"):
        loop.run(args, m, v, {}, drafters.kd_step_fn(c, v, args), "kd")


def test_eval_cli_reports_tau_per_k_category_and_position(tmp_path, work):
    out = tmp_path / "eval.json"
    cli.run(["eval", "--drafter", work["kd"], "--cache", str(work["dir"] / "heldout"), "--k", "2,8",
              "-o", str(out), "--quiet"])
    res = json.load(open(out))["results"]
    assert set(res) == {"2", "8"}
    r8 = res["8"]
    assert set(r8["tau_by_category"]) == {"modeA", "modeB"}
    assert len(r8["accept_rate_by_position"]) == 8
    assert 1.0 <= res["2"]["tau"] <= 3.0 and r8["tau"] == pytest.approx(tau(work["kd"], work["heldout"]))
    # KD drafts Y_m at markers (see train_fixtures): mode B sequences go through, mode A ones stop
    assert r8["tau_by_category"]["modeB"] > r8["tau_by_category"]["modeA"] + 1.0


def test_console_exit_status(tmp_path, capsys):
    # The console script exits 0 on success (checked in the end-to-end tests through run()) and
    # 2 with a one-line error on bad input instead of a traceback.
    rc = cli.main(["kd", "--cache", str(tmp_path / "missing"), "-o", str(tmp_path / "out"), "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("ppow-train: error: ") and "\n" not in err, err
