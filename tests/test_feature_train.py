"""Feature (EAGLE-3) drafters: trainer and converter (CPU, offline, well under a minute).

The network computes llama.cpp's eagle3 graph (checked here against a NumPy transcription of
src/models/eagle3.cpp; against llama.cpp itself see python/ppow/train/README.md); the unrolled
training-time test equals entry-by-entry drafting; drafting, teacher-forced windows and the reference
function agree; KD learns; eval mirrors the runtime's greedy chain; resume is exact; the eagle3 GGUF
loads in llama.cpp in every out type; bad checkpoints and caches fail with one clear line.
The cache comes from the data engine on the tiny target (2 layers, hidden 64: layers 0, 1, 1).
"""
import json
import os
import shutil

import gguf
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from ppow.train import checkpoint as C
from ppow.train import cli, kd
from ppow.train import evaluate as E
from ppow.train import feature_model as FM
from ppow.train.cache import Cache
from ppow.train.datagen import build_engine_cache
from ppow_convert import cli as convert_cli
from ppow_convert import convert_drafter
from test_datagen import PROMPTS

LAYERS = [0, 1, 1]
KD = ["--drafter-kind", "feature", "--draft-vocab", "128", "--heads", "2", "--kv-heads", "1", "--intermediate", "96",
      "--batch-size", "8", "--lr", "3e-3", "--warmup", "5", "--threads", "1", "--quiet", "--seed", "0"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared 2-core machine
    yield
    torch.set_num_threads(n)


def make_cache(target, path, layers=LAYERS, n=36, max_new=24):
    prompts = [{"text": p + f" {i}", "category": f"c{i % 2}", "id": str(i)} for i, p in enumerate((PROMPTS * 3)[:n])]
    build_engine_cache(target, str(path), prompts, max_new=max_new, topk=8, layers=layers, n_parallel=4, threads=1,
                       progress=False)
    return Cache(str(path))


@pytest.fixture(scope="module")
def work(tiny_target_gguf, tmp_path_factory):
    d = tmp_path_factory.mktemp("feature")
    cache = make_cache(tiny_target_gguf, d / "cache")
    cli.run(["kd", "--cache", str(d / "cache"), "--target", tiny_target_gguf, *KD, "--steps", "40", "-o", str(d / "kd")])
    model, vocab, info = C.load_drafter(str(d / "kd" / "final"))
    return dict(dir=d, cache=cache, ckpt=str(d / "kd" / "final"), target=tiny_target_gguf, model=model.eval(),
                vocab=vocab, info=info)


# ------------------------------------------------------------------------------------------ the graph


def eagle3_numpy(sd, cfg, E, feats, entries):
    """llama.cpp's eagle3 graphs transcribed into NumPy (float64) from src/models/eagle3.cpp.

    entries: list of (token, state or None); None takes the encoder output of the entry's own row of
    feats (fc_out). Entry i sits at position i, attends causally. Returns (logits, prenorm) per entry."""
    eps, nh, nkv, hd = cfg["rms_norm_eps"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    w = {k: v.astype(np.float64) for k, v in sd.items()}
    rms = lambda x, g: x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g  # noqa: E731
    f = feats.astype(np.float64)
    if cfg["norm_before_fc"]:
        f = rms(f, w["input_norm.weight"])
    g_enc = f @ w["fc.weight"].T  # encoder: fc_out
    s = np.stack([g_enc[i] if st is None else st for i, (_, st) in enumerate(entries)])
    e = E.astype(np.float64)[[t for t, _ in entries]]  # borrowed target rows, unscaled
    sn = rms(s, w["midlayer.hidden_norm.weight"])  # attn_norm_2
    x = np.concatenate([rms(e, w["midlayer.input_layernorm.weight"]), sn], -1)  # ggml_concat(embd_norm, g_norm)
    T = len(entries)
    q = (x @ w["midlayer.self_attn.q_proj.weight"].T).reshape(T, nh, hd)
    k = (x @ w["midlayer.self_attn.k_proj.weight"].T).reshape(T, nkv, hd)
    v = (x @ w["midlayer.self_attn.v_proj.weight"].T).reshape(T, nkv, hd)
    for p in range(T):  # rope NORM: pairs (2i, 2i+1), theta = p * base^(-2i/n_rot)
        for i in range(hd // 2):
            th = p * cfg["rope_theta"] ** (-2.0 * i / hd)
            for z in (q, k):
                a, b = z[p, :, 2 * i].copy(), z[p, :, 2 * i + 1].copy()
                z[p, :, 2 * i], z[p, :, 2 * i + 1] = a * np.cos(th) - b * np.sin(th), a * np.sin(th) + b * np.cos(th)
    att = np.zeros((T, nh, hd))
    for h in range(nh):
        kh = h // (nh // nkv)  # ggml broadcast: consecutive query heads share a kv head
        sc = q[:, h] @ k[:, kh].T / np.sqrt(hd) + np.triu(np.full((T, T), -np.inf), 1)
        pr = np.exp(sc - sc.max(-1, keepdims=True))
        att[:, h] = (pr / pr.sum(-1, keepdims=True)) @ v[:, kh]
    h1 = att.reshape(T, nh * hd) @ w["midlayer.self_attn.o_proj.weight"].T + (sn if cfg["norm_before_residual"] else s)
    n = rms(h1, w["midlayer.post_attention_layernorm.weight"])
    gate = n @ w["midlayer.mlp.gate_proj.weight"].T
    h2 = h1 + ((gate / (1 + np.exp(-gate))) * (n @ w["midlayer.mlp.up_proj.weight"].T)) @ w["midlayer.mlp.down_proj.weight"].T
    return rms(h2, w["norm.weight"]) @ w["lm_head.weight"].T, h2


@pytest.mark.parametrize("variant", [
    dict(num_attention_heads=2, num_key_value_heads=1),
    dict(num_attention_heads=4, num_key_value_heads=2, head_dim=12, norm_before_residual=True, norm_before_fc=True),
])
def test_network_is_llama_cpp_eagle3_graph(variant):
    H, V, Vd, T, k = 16, 50, 20, 7, 3
    cfg = FM.make_config(hidden_size=H, target_hidden_size=H, target_layers=[0, 1, 1], target_vocab_size=V,
                         draft_vocab_size=Vd, intermediate_size=24, rms_norm_eps=1e-5, rope_theta=500.0,
                         initializer_range=0.3, **variant)
    torch.manual_seed(0)
    m = FM.FeatureDrafter(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    E_ = torch.randn(V, H)
    d2t = torch.randperm(V)[:Vd]
    m.set_embeddings(E_)
    m.set_d2t(d2t)
    feats, toks = torch.randn(T, 3 * H) * 3, torch.randint(V, (T + 1,))
    ref = FM.reference_draft_logits(m, feats, toks, k=k)
    sd = {n: p.detach().numpy() for n, p in m.state_dict().items()}
    entries = [(int(t), None) for t in toks[1:]]
    lg, pre = eagle3_numpy(sd, cfg, E_.numpy(), feats.numpy(), entries)
    np.testing.assert_allclose(ref["logits"].numpy(), lg, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(ref["prenorm"].numpy(), pre, atol=2e-4, rtol=1e-4)
    for j in range(k):  # draft steps: (drafted token, previous prenorm) appended at position T + j
        t = int(d2t[lg[-1].argmax()])
        assert t == int(ref["draft_tokens"][j])
        entries.append((t, pre[-1]))
        f = np.concatenate([feats.numpy(), np.zeros((len(entries) - T, 3 * H))])  # new entries carry states
        lg, pre = eagle3_numpy(sd, cfg, E_.numpy(), f, entries)
        np.testing.assert_allclose(ref["draft_logits"][j].numpy(), lg[-1], atol=2e-4, rtol=1e-4)
    full = FM.reference_draft_logits(m, feats, toks, k=1, full_vocab=True)["logits"]
    assert full.shape == (T, V) and torch.isinf(full).sum() == T * (V - Vd)
    assert torch.equal(full[:, d2t], ref["logits"])


def sequential(model, feats, toks, c, extra):
    """Entries 0..c one at a time on target features, then one own-state step per extra token."""
    kv, out = None, []
    g = model.encode(feats)
    for p in range(c + 1):
        lg, s, kv = model.decode(toks[p:p + 1][None], g[p:p + 1][None], torch.tensor([p]),
                                 torch.ones(1, 1, 1, p + 1, dtype=torch.bool), kv)
    out.append(lg[0, -1])
    for j, t in enumerate(extra):
        lg, s, kv = model.decode(torch.tensor([[t]]), s, torch.tensor([c + 1 + j]),
                                 torch.ones(1, 1, 1, c + 2 + j, dtype=torch.bool), kv)
        out.append(lg[0, -1])
    return out


@torch.no_grad()
def test_unrolled_training_steps_equal_entry_by_entry_drafting(work):
    """Column c at step i of the training-time test is the entry at position c+i after c+1 target-feature
    entries and i own-state steps fed the trajectory's tokens; padding changes nothing."""
    cache, model, vocab = work["cache"], work["model"], work["vocab"]
    S = 3
    s0 = [int(cache.seq_start[i]) for i in (1, 4)]
    starts = torch.tensor([s0[0], s0[1] + 2])
    ends = torch.tensor([s0[0] + 9, s0[1] + 7])  # lengths 9 and 5: the second row is left-padded
    feats, key_mask, toks, labels, p_ids, p, valid = kd.ttt_batch(cache, vocab, starts, ends, S, cache.scored)
    assert feats.shape == (2, 9, 3 * 64) and toks.shape == labels.shape == valid.shape == (S, 2, 9)
    assert p_ids.shape == p.shape == (S, 2, 9, cache.topk) and key_mask[1].tolist() == [False] * 4 + [True] * 5
    out = model(feats, list(toks), key_mask)
    assert len(out) == S and all(o.shape == (2, 9, 128) for o in out)
    for b in range(2):
        s, e = int(starts[b]), int(ends[b])
        n = e - s
        for c in range(n):
            r = s + c + 1  # label row of step 0
            want = vocab.to_draft_label(cache.greedy[r:r + S])
            for i in range(S):
                if valid[i, b, 9 - n + c]:
                    assert labels[i, b, 9 - n + c] == want[i]
            ref = sequential(model, cache.hidden[s:e].reshape(n, -1).float(), cache.tokens[s + 1:e + 1], c,
                             cache.tokens[s + c + 2:s + c + S + 1].tolist())
            for i in range(S):
                torch.testing.assert_close(out[i][b, 9 - n + c], ref[i], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_draft_windows_and_reference_agree(work):
    cache, model, vocab = work["cache"], work["model"], work["vocab"]
    seq = 2
    s = int(cache.seq_start[seq])
    ts = [s + int(cache.prompt_len[seq]) + j for j in (0, 5, 11)]  # contexts of different lengths
    ctx = [FM.make_context(cache, t) for t in ts]
    toks, logp = FM.draft(model, ctx, 4)
    assert toks.shape == logp.shape == (3, 4)
    win = FM.forward_windows(model, ctx, toks)
    for i, t in enumerate(ts):
        ref = FM.reference_draft_logits(model, cache.hidden[s:t].reshape(t - s, -1).float(), cache.tokens[s:t + 1], k=4)
        assert vocab.to_target(toks[i]).tolist() == ref["draft_tokens"].tolist()
        torch.testing.assert_close(win[i], torch.cat([ref["logits"][-1:], ref["draft_logits"][:3]]), atol=1e-4, rtol=1e-4)
    # sampled drafts: their log-probs are those of the teacher-forced windows
    stoks, slogp = FM.draft(model, ctx, 4, greedy=False, generator=torch.Generator().manual_seed(0))
    lp = torch.log_softmax(FM.forward_windows(model, ctx, stoks), -1).gather(-1, stoks[..., None]).squeeze(-1)
    torch.testing.assert_close(lp, slogp, atol=1e-4, rtol=1e-4)
    # PPOW groups (the same context object repeated) run each context once: same windows as distinct copies
    grouped = [c for c in ctx for _ in range(3)]
    copies = [(f.clone(), t.clone()) for f, t in grouped]
    gtoks, glogp = FM.draft(model, grouped, 4, greedy=False, generator=torch.Generator().manual_seed(1))
    ctoks, clogp = FM.draft(model, copies, 4, greedy=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(gtoks, ctoks)
    torch.testing.assert_close(glogp, clogp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(FM.forward_windows(model, grouped, gtoks), FM.forward_windows(model, copies, gtoks),
                               atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ training


def test_kd_learns_and_checkpoint_layout(work):
    rows = [json.loads(line) for line in open(os.path.join(work["dir"], "kd", "metrics.jsonl"))]
    assert len(rows) == 40 and {"ce_1", "kl_2", "top1_2"} <= set(rows[0])
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
    assert last < 0.6 * first, (first, last)
    assert np.mean([r["top1"] for r in rows[-5:]]) > np.mean([r["top1"] for r in rows[:5]]) + 0.3
    ck = work["ckpt"]
    cfg = json.load(open(os.path.join(ck, "config.json")))
    assert cfg["model_type"] == "ppow_eagle3" and cfg["target_layers"] == LAYERS and cfg["hidden_size"] == 64
    assert "embed" not in load_file(os.path.join(ck, "model.safetensors"))  # borrowed, never saved
    assert work["info"]["drafter_kind"] == "feature" and work["info"]["target_path"] == os.path.abspath(work["target"])
    assert len(work["vocab"].d2t) == 128


def test_resume_is_exact(work, tmp_path):
    common = ["kd", "--cache", str(work["dir"] / "cache"), "--target", work["target"], *KD, "--steps", "6",
              "--save-every", "0"]
    cli.run(common + ["-o", str(tmp_path / "full")])
    cli.run(common + ["-o", str(tmp_path / "cut"), "--stop-after", "3"])
    cli.run(common + ["-o", str(tmp_path / "cut"), "--resume"])
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_bad_caches_and_flags(work, tiny_target_gguf, tmp_path):
    base = ["kd", "--target", tiny_target_gguf, *KD, "--steps", "1", "-o", str(tmp_path / "o")]
    make_cache(tiny_target_gguf, tmp_path / "two", layers=[0, 1], n=4, max_new=4)
    make_cache(tiny_target_gguf, tmp_path / "none", layers=[], n=4, max_new=4)
    for cache, extra, match in ((tmp_path / "two", [], "3 feature layers"), (tmp_path / "none", [], "3 feature layers"),
                                (work["dir"] / "cache", ["--hidden", "32"], "target's"),
                                (work["dir"] / "cache", ["--layers", "2"], "one layer")):
        with pytest.raises(ValueError, match=match):
            cli.run(base[:1] + ["--cache", str(cache)] + base[1:] + extra)
    with pytest.raises(ValueError, match="target layers"):  # eval on features of other layers
        cli.run(["eval", "--drafter", work["ckpt"], "--cache", str(tmp_path / "two"), "--quiet"])


@pytest.mark.parametrize("n", ["96", "200", "0"])
def test_init_moves_a_trained_head_to_another_vocabulary(work, tmp_path, n):
    """--init with --draft-vocab: the draft vocabulary is rebuilt from this cache; a token the drafter knew
    keeps its trained row, a new one starts from the target's row at the trained rows' scale."""
    flags = [f for f in KD if f not in ("--draft-vocab", "128")]
    out = cli.run(["kd", "--cache", str(work["dir"] / "cache"), "--target", work["target"], *flags, "--draft-vocab", n,
                   "--init", work["ckpt"], "--steps", "0", "-o", str(tmp_path)])
    new, vocab, info = C.load_drafter(out)
    tv = int(work["cache"].meta["target"]["vocab_size"])
    want = kd.build_vocab(work["cache"], int(n))
    d2t = torch.arange(tv) if vocab.size == tv and getattr(vocab, "d2t", None) is None else vocab.d2t
    assert torch.equal(d2t, torch.arange(tv) if int(n) == 0 or int(n) >= tv else want.d2t)
    old_rows, old_d2t = work["model"].lm_head.weight.detach(), work["vocab"].d2t.tolist()
    new_rows = new.lm_head.weight.detach()
    kept = [(j, old_d2t.index(t)) for j, t in enumerate(d2t.tolist()) if t in old_d2t]
    assert info["vocab_remap"] == dict(old=128, new=len(d2t), kept_rows=len(kept))
    for j, i in kept:
        assert torch.equal(new_rows[j], old_rows[i])
    fresh = [j for j in range(len(d2t)) if j not in dict(kept)]
    assert (len(fresh) > 0) == (int(n) != 96)
    if fresh:
        ratio = new_rows[fresh].norm(dim=1).mean() / old_rows.norm(dim=1).mean()
        assert 0.5 < float(ratio) < 2.0


def test_remap_head_maps_new_rows_into_the_trained_space(work):
    """New tokens' rows come from the target's through the linear map the shared rows fit: where the
    trained head is exactly such a map of the target's rows, the new rows are that map's."""
    import copy

    target = FM.read_target(work["target"])
    model, old = copy.deepcopy(work["model"]), work["vocab"].d2t
    tv, h = target["vocab_size"], target["hidden_size"]
    a_true = torch.randn(h, h, generator=torch.Generator().manual_seed(1)) / h ** 0.5
    with torch.no_grad():
        model.lm_head.weight.copy_(target["output"][old].float() @ a_true)
    new = torch.cat([old, torch.tensor([t for t in range(tv) if t not in set(old.tolist())][:40])])
    kept = FM.remap_head(model, old, new, target, ridge=1e-6)
    assert kept == 128 and tuple(model.lm_head.weight.shape) == (168, h) and torch.equal(model.d2t, new)
    want = target["output"][new].float() @ a_true
    err = (model.lm_head.weight.detach() - want).abs().max() / want.abs().max()
    assert float(err) < 1e-2, float(err)


def test_resume_keeps_the_vocabulary_its_weights_were_trained_on(work, tiny_target_gguf, tmp_path):
    """A cache still being written counts tokens differently when a run resumes: the saved draft
    vocabulary is kept, not rebuilt (weights and d2t must stay together)."""
    other = [{"text": f"{w} {i} {w}", "category": "x", "id": f"o{i}"}
             for i, w in enumerate(["zebra quartz", "ninety nine", "xylophone", "vvv www"] * 4)]
    build_engine_cache(tiny_target_gguf, str(tmp_path / "more"), other, max_new=24, topk=8, layers=LAYERS,
                       n_parallel=4, threads=1, progress=False)
    flags = [f for f in KD if f not in ("--draft-vocab", "128")] + ["--draft-vocab", "24", "--steps", "4"]
    one = ["--cache", str(work["dir"] / "cache")]
    cli.run(["kd", *one, "--target", work["target"], *flags, "--stop-after", "2", "-o", str(tmp_path / "r")])
    first = C.load_drafter(str(tmp_path / "r" / "ckpt"))[1].d2t
    grown = Cache([str(work["dir"] / "cache"), str(tmp_path / "more")])
    assert not torch.equal(kd.build_vocab(grown, 24).d2t, first)  # the grown cache would pick another vocabulary
    out = cli.run(["kd", *one, "--cache", str(tmp_path / "more"), "--target", work["target"], *flags, "--resume",
                   "-o", str(tmp_path / "r")])
    assert torch.equal(C.load_drafter(out)[1].d2t, first)
    # --init moving the head: a resumed run keeps the vocabulary it moved to
    moved = ["kd", *one, "--target", work["target"], *flags, "--init", work["ckpt"], "-o", str(tmp_path / "m")]
    cli.run(moved + ["--stop-after", "2"])
    first = C.load_drafter(str(tmp_path / "m" / "ckpt"))[1].d2t
    out = cli.run(moved[:1] + ["--cache", str(tmp_path / "more")] + moved[1:] + ["--resume", "--stop-after", "1"])
    assert torch.equal(C.load_drafter(str(tmp_path / "m" / "ckpt"))[1].d2t, first)
    # resumed without --draft-vocab (the init drafter's own vocabulary has as many tokens): still the moved one
    again = [f for f in moved if f not in ("--draft-vocab", "24")]
    assert again != moved
    out = cli.run(again + ["--resume"])
    assert torch.equal(C.load_drafter(out)[1].d2t, first)


def test_init_with_another_vocabulary_is_refused_for_standalone(work, tmp_path):
    ck = cli.run(["kd", "--cache", str(work["dir"] / "cache"), "--steps", "1", "--hidden", "32", "--heads", "2",
                  "--threads", "1", "--quiet", "-o", str(tmp_path / "s")])
    with pytest.raises(ValueError, match="train it afresh"):
        cli.run(["kd", "--cache", str(work["dir"] / "cache"), "--init", ck, "--draft-vocab", "64", "--steps", "0",
                 "--threads", "1", "--quiet", "-o", str(tmp_path / "t")])


def test_ppow_runs_on_a_feature_drafter(work, tmp_path):
    out = cli.run(["ppow", "--cache", str(work["dir"] / "cache"), "--init", work["ckpt"], "--steps", "2", "--windows", "4",
                   "--group-size", "2", "--k-max", "3", "--k-min", "2", "--threads", "1", "--quiet", "-o", str(tmp_path)])
    m, _, info = C.load_drafter(out)
    assert m.kind == "feature" and info["drafter_kind"] == "feature"


# ------------------------------------------------------------------------------------------ eval


def test_heldout_curve_is_logged_and_equals_eval(work, tmp_path):
    """--eval-cache logs the held-out greedy-chain tau every --eval-every steps and at the end; the last
    entry is what `ppow-train eval` says of the final drafter; the training cache is refused as held out."""
    held = tmp_path / "held"
    prompts = [{"text": f"held out question {i}: " + p, "category": "h", "id": str(i)} for i, p in enumerate(PROMPTS[:6])]
    build_engine_cache(work["target"], str(held), prompts, max_new=24, topk=8, layers=LAYERS, n_parallel=4, threads=1,
                       progress=False)
    base = ["kd", "--cache", str(work["dir"] / "cache"), "--target", work["target"], *KD, "--steps", "6", "--save-every", "0"]
    out = cli.run(base + ["-o", str(tmp_path / "kd"), "--eval-cache", str(held), "--eval-every", "3", "--eval-k", "3"])
    rows = [json.loads(line) for line in open(tmp_path / "kd" / "metrics.jsonl")]
    curve = [r for r in rows if r["stage"] == "heldout"]
    assert [r["step"] for r in curve] == [0, 3, 6] and all(r["sequences"] == 6 for r in curve)
    assert len([r for r in rows if r["stage"] == "kd"]) == 6
    assert all(1.0 <= r["tau_k3"] <= 4.0 and len(r["accept_by_position"]) == 3 for r in curve)
    res = cli.run(["eval", "--drafter", out, "--cache", str(held), "--k", "3", "--quiet"])
    assert curve[-1]["tau_k3"] == round(res["results"]["3"]["tau"], 4)
    with pytest.raises(ValueError, match="not held out"):
        cli.run(base + ["-o", str(tmp_path / "bad"), "--eval-cache", str(work["dir"] / "cache")])
    with pytest.raises(ValueError, match="needs a held-out curve"):
        cli.run(base + ["-o", str(tmp_path / "bad"), "--early-stop", "2"])


def test_early_stop_keeps_the_plateaus_best_drafter(work, tmp_path):
    """--early-stop P: the run stops after P evaluations without a gain and OUT/final is the best evaluated
    drafter. An eps no gain can reach makes the first evaluation (the initial drafter, step 0) the best
    and stops after P more."""
    held = tmp_path / "held"
    prompts = [{"text": f"another held out one {i}: " + p, "category": "h", "id": str(i)} for i, p in enumerate(PROMPTS[:4])]
    build_engine_cache(work["target"], str(held), prompts, max_new=16, topk=8, layers=LAYERS, n_parallel=4, threads=1,
                       progress=False)
    out = cli.run(["kd", "--cache", str(work["dir"] / "cache"), "--target", work["target"], *KD, "--steps", "40",
                   "--save-every", "0", "-o", str(tmp_path / "kd"), "--eval-cache", str(held), "--eval-every", "2",
                   "--early-stop", "2", "--early-stop-eps", "10"])
    rows = [json.loads(line) for line in open(tmp_path / "kd" / "metrics.jsonl")]
    curve = [r for r in rows if r["stage"] == "heldout"]
    assert [r["step"] for r in curve] == [0, 2, 4] and all(r["best_step"] == 0 for r in curve)
    assert len([r for r in rows if r["stage"] == "kd"]) == 4  # stopped at the plateau, not at --steps 40
    assert out.endswith("final") and C.read_info(out)["step"] == 0
    a = load_file(str(tmp_path / "kd" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "kd" / "best" / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    res = cli.run(["eval", "--drafter", out, "--cache", str(held), "--k", "4", "--quiet"])
    assert round(res["results"]["4"]["tau"], 4) == curve[0]["tau_k4"]
    again = cli.run(["kd", "--cache", str(work["dir"] / "cache"), "--target", work["target"], *KD, "--steps", "40",
                     "--save-every", "0", "-o", str(tmp_path / "kd"), "--eval-cache", str(held), "--eval-every", "2",
                     "--early-stop", "2", "--early-stop-eps", "10", "--resume"])
    assert again == out and len(open(tmp_path / "kd" / "metrics.jsonl").readlines()) == len(rows)  # nothing more to do


def test_eval_mirrors_the_runtime_greedy_chain(work):
    """simulate() equals a window-by-window replay with reference_draft_logits: the window after
    committed position t drafts from entries p < t on target features, then its own states."""
    cache, model, vocab = work["cache"], work["model"], work["vocab"]
    k = 3
    for seq in (0, 7):
        steps = E.simulate(model, vocab, cache, k, ctx_len=0, seqs=[seq])
        s, end = int(cache.seq_start[seq]), int(cache.seq_start[seq] + cache.seq_len[seq])
        t, want = s + int(cache.prompt_len[seq]), []
        while t < end - 1:
            ke = min(k, end - 1 - t)
            d = FM.reference_draft_logits(model, cache.hidden[s:t].reshape(t - s, -1).float(), cache.tokens[s:t + 1],
                                          k=ke)["draft_tokens"]
            a = 0
            while a < ke and int(d[a]) == int(cache.greedy[t + a]):
                a += 1
            want.append((seq, a, ke))
            t += a + 1
        assert steps == want
    assert any(a > 0 for _, a, _ in steps)


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_eval_in_one_pass_equals_window_by_window(work, k):
    """The one-pass simulation of a feature drafter (feature_matches) equals drafting window by window."""
    cache, model, vocab = work["cache"], work["model"], work["vocab"]
    fast = E.simulate(model, vocab, cache, k, ctx_len=0)
    slow = E.simulate(model, vocab, cache, k, ctx_len=0, fast=False)
    by_seq = lambda steps: sorted(steps, key=lambda r: r[0])  # noqa: E731 - stable: each sequence's own order
    assert by_seq(fast) == by_seq(slow) and len(fast) > 20
    assert any(a >= min(k, 2) for _, a, _ in fast)


def test_eval_cli_on_cache_and_prompts(work, tmp_path):
    res = cli.run(["eval", "--drafter", work["ckpt"], "--cache", str(work["dir"] / "cache"), "--k", "2,4", "--quiet"])
    r = res["results"]["4"]
    assert res["drafter_kind"] == "feature" and set(r["tau_by_category"]) == {"c0", "c1"}
    assert len(r["accept_rate_by_position"]) == 4 and 1 < r["tau"] <= 5
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": p, "category": "x"}) + "\n" for p in PROMPTS[:3]))
    res = cli.run(["eval", "--drafter", work["ckpt"], "--prompts", str(prompts), "--target", work["target"],
                   "--max-new", "8", "--k", "2", "--quiet", "--work-dir", str(tmp_path / "ev")])
    assert res["sequences"] == 3 and res["results"]["2"]["verify_steps"] > 0
    assert Cache(str(tmp_path / "ev")).layers == LAYERS


# ------------------------------------------------------------------------------------------ converter


def gguf_fields(path):
    r = gguf.GGUFReader(str(path))
    return r, {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_convert_eagle3_and_llama_cpp_loads_it(work, tmp_path, outtype):
    out = convert_drafter(work["ckpt"], work["target"], str(tmp_path / "d.gguf"), outtype)
    r, kv = gguf_fields(out)
    want = {"general.architecture": "eagle3", "eagle3.context_length": 8192, "eagle3.embedding_length": 64,
            "eagle3.block_count": 1, "eagle3.feed_forward_length": 96, "eagle3.attention.head_count": 2,
            "eagle3.attention.head_count_kv": 1, "eagle3.attention.key_length": 32,
            "eagle3.attention.value_length": 32, "eagle3.rope.freq_base": 10000.0, "eagle3.target_layers": LAYERS,
            "eagle3.target_hidden_size": 64, "eagle3.vocab_size": 512, "tokenizer.ggml.model": "none"}
    assert {k: kv.get(k) for k in want} == want
    assert r.fields["eagle3.target_layers"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]
    assert kv["eagle3.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    t = {x.name: x for x in r.tensors}
    assert "token_embd.weight" not in t and "enc.output_norm.weight" not in t
    assert t["d2t"].tensor_type == gguf.GGMLQuantizationType.I64
    assert np.array_equal(np.asarray(t["d2t"].data), work["vocab"].d2t.numpy())
    for name in ("fc.weight", "output_norm.weight", "blk.0.attn_norm_2.weight", "blk.0.ffn_norm.weight"):
        assert t[name].tensor_type == gguf.GGMLQuantizationType.F32, name
    assert t["output.weight"].tensor_type.name == outtype.upper()
    assert list(t["blk.0.attn_q.weight"].shape) == [128, 64]  # ne0 = 2H inputs
    if outtype == "f32":  # weights exactly as trained (no q/k permutation: the trainer uses ggml's RoPE)
        sd = load_file(os.path.join(work["ckpt"], "model.safetensors"))
        for src, dst in (("fc.weight", "fc.weight"), ("lm_head.weight", "output.weight"),
                         ("midlayer.self_attn.q_proj.weight", "blk.0.attn_q.weight"),
                         ("midlayer.hidden_norm.weight", "blk.0.attn_norm_2.weight")):
            assert np.array_equal(np.asarray(t[dst].data).reshape(sd[src].shape), sd[src]), src
    import llama_cpp

    model = llama_cpp.llama_model_load_from_file(str(out).encode(), llama_cpp.llama_model_default_params())
    assert model, "llama.cpp refused the eagle3 GGUF"
    try:
        buf = llama_cpp.ctypes.create_string_buffer(64)
        llama_cpp.llama_model_meta_val_str(model, b"general.architecture", buf, 64)
        assert buf.value == b"eagle3"
        assert llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model)) == 512
        assert llama_cpp.llama_model_n_embd(model) == 64 and llama_cpp.llama_model_has_encoder(model)
    finally:
        llama_cpp.llama_model_free(model)


def test_convert_writes_norm_before_fc_and_full_vocab(work, tmp_path):
    cli.run(["kd", "--cache", str(work["dir"] / "cache"), "--target", work["target"], *KD, "--steps", "1",
             "--draft-vocab", "0", "--norm-before-fc", "--norm-before-residual", "-o", str(tmp_path / "kd")])
    out = convert_drafter(str(tmp_path / "kd" / "final"), work["target"], str(tmp_path / "d.gguf"), "f16")
    r, kv = gguf_fields(out)
    t = {x.name: x for x in r.tensors}
    assert kv["eagle3.norm_before_fc"] is True and kv["eagle3.norm_before_residual"] is True
    assert list(t["enc.output_norm.weight"].shape) == [192] and "d2t" not in t
    assert list(t["output.weight"].shape) == [64, 512]


def test_convert_from_a_resumable_checkpoint(work, tmp_path):
    """OUT/ckpt (a run stopped early) holds the optimizer beside the weights: it converts as the
    weights alone do."""
    ckpt = work["dir"] / "kd" / "ckpt"
    assert (ckpt / "trainer_state.safetensors").exists()
    weights = tmp_path / "weights"
    shutil.copytree(ckpt, weights, ignore=shutil.ignore_patterns("trainer_state.*"))
    a = convert_drafter(str(ckpt), work["target"], str(tmp_path / "a.gguf"), "f32")
    b = convert_drafter(str(weights), work["target"], str(tmp_path / "b.gguf"), "f32")
    ta = {x.name: np.asarray(x.data) for x in gguf.GGUFReader(a).tensors}
    tb = {x.name: np.asarray(x.data) for x in gguf.GGUFReader(b).tensors}
    assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)


def _mutate(work, tmp_path, what):
    d = tmp_path / "bad"
    shutil.copytree(work["ckpt"], d)
    cfg = json.loads((d / "config.json").read_text())
    sd = load_file(str(d / "model.safetensors"))
    if what == "missing":
        sd.pop("lm_head.weight")
    elif what == "shape":
        sd["fc.weight"] = sd["fc.weight"][:, :128].copy()
    elif what == "vocab":
        cfg["target_vocab_size"] = 1000
    elif what == "hidden":
        cfg["hidden_size"] = cfg["target_hidden_size"] = 32
    elif what == "layers":
        cfg["target_layers"] = [0, 1]
    elif what == "d2t":
        v = load_file(str(d / "draft_vocab.safetensors"))
        v["d2t"][0] = 600
        save_file(v, str(d / "draft_vocab.safetensors"))
    elif what == "nan":
        sd["midlayer.mlp.up_proj.weight"][0, 0] = np.nan
    elif what == "pickle":
        os.remove(d / "model.safetensors")
        (d / "pytorch_model.bin").write_bytes(b"\x80\x04")
    (d / "config.json").write_text(json.dumps(cfg))
    if what != "pickle":
        save_file(sd, str(d / "model.safetensors"))
    return d


@pytest.mark.parametrize("what,match", [
    ("missing", "missing tensor 'lm_head.weight'"), ("shape", "'fc.weight' has shape"),
    ("vocab", "1000 tokens"), ("hidden", "width 32"), ("layers", "exactly 3"),
    ("d2t", "outside the target vocabulary"), ("nan", "NaN"), ("pickle", "pickle"),
])
def test_convert_errors(work, tmp_path, capsys, what, match):
    d = _mutate(work, tmp_path, what)
    out = tmp_path / "o.gguf"
    assert convert_cli.main(["drafter", str(d), "--target", work["target"], "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("o.gguf*"))


def test_failed_write_leaves_no_file(work, tmp_path, monkeypatch):
    from ppow_convert import eagle3

    calls = []

    def boom(w, name, data, outtype):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(w, name, data, outtype)

    real = eagle3.add_weight
    monkeypatch.setattr(eagle3, "add_weight", boom)
    with pytest.raises(OSError):
        convert_drafter(work["ckpt"], work["target"], str(tmp_path / "o.gguf"), "q8_0")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ the runtime


@pytest.mark.parametrize("outtype,fc_type", [("f32", "f32"), ("f16", "f32"), ("q8_0", "q8_0")])
def test_engine_draft_logits_equal_the_pytorch_module(work, tmp_path, outtype, fc_type):
    """A trained tiny drafter, converted: the engine's draft windows (target features captured by the
    engine, the eagle3 graph in llama.cpp) against reference_draft_logits on the same features.
    Tolerance: llama.cpp keeps the drafter's K/V in f16 and uses flash attention (measured through
    llama-cpp-python: ~2e-3 on these logits, 2e-6 with an f32 cache, see README); f16 weights add
    their own rounding. Measured (2-core Xeon): max |diff| 1.4e-3..2.0e-3 (f32 GGUF), 2.2e-3..2.7e-3
    (f16) on logits of magnitude ~10; 2.9e-2..3.7e-2 on the first row with q8_0 weights and fc (the
    features are quantized to 8 bits at run time). Asserted: <= 0.02 (f32), 0.05 (f16), 0.1 (q8_0),
    and the same greedy tokens (f32, f16)."""
    import ppow

    out = convert_drafter(work["ckpt"], work["target"], str(tmp_path / "d.gguf"), outtype, fc_type)
    fc = next(t for t in gguf.GGUFReader(out).tensors if t.name == "fc.weight")
    assert fc.tensor_type.name == fc_type.upper()
    tol = {"f32": 0.02, "f16": 0.05, "q8_0": 0.1}[outtype]
    model = work["model"]
    with ppow.Generator(work["target"], out, n_ctx=256, n_threads=1) as g:
        assert g.drafter_kind == "feature"
        for text in PROMPTS[:4]:
            toks = g.tokenize(text) + g.generate(text, n_predict=8, use_drafter=False, ignore_eos=True).tokens
            drafted, logits = g.draft_window(toks, 4)
            _, feats = g.features(toks[:-1], layers=LAYERS, n_last=1)
            T = len(toks) - 1
            ref = FM.reference_draft_logits(model, torch.from_numpy(feats).permute(1, 0, 2).reshape(T, -1),
                                            torch.tensor(toks), k=4)
            want = torch.cat([ref["logits"][-1:], ref["draft_logits"][:3]]).numpy()
            assert logits.shape == want.shape
            if outtype == "q8_0":  # near-ties of a tiny model may draft other tokens: compare the first row,
                # which depends on the features and the prompt only
                logits, want = logits[:1], want[:1]
            else:
                assert drafted == ref["draft_tokens"].tolist(), text
            assert np.abs(logits - want).max() <= tol, (text, np.abs(logits - want).max())
