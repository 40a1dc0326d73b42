"""The data engine (cpp/datagen.cpp, python/ppow/train/datagen.py): batched target generation with
hidden-state capture, written as a resumable training cache.

On the tiny f32 Llama target: sequences generated n_parallel at a time equal sequential generation
and the runtime's plain greedy output; captured features equal Generator.features(); top-k
probabilities are the full softmax of Generator.score(); a killed run resumes to the same cache;
caches for another target or other layers are refused; bad layers are clear errors.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import ppow
from ppow import PpowError, _core
from ppow.train import datagen
from ppow.train.cache import Cache, TargetMismatch

PROMPTS = [
    "The quick brown fox", "Once upon a time there was", "The river was blue", "def add(a, b):",
    "Numbers are fun: 1, 2,", "The painter said:", "Speculative decoding lets", "When the draft model is",
    "On the 8th day it painted", "Every morning the robot", "The big model checks", "print(add(",
]


def engine(gguf, n_parallel, n_ctx=None):
    mp = _core.ModelParams()
    mp.path, mp.n_threads, mp.n_parallel, mp.batch_invariant = str(gguf), 1, n_parallel, False
    mp.n_ctx, mp.n_batch = n_ctx or n_parallel * 64 + 256, 512
    return _core.DataGen(mp)


def generate(gen, prompts, max_new=24, layers=(0, 1), topk=8, temp=0.0, seed=0, indices=(), device_topk=False):
    p = _core.DataGenParams()
    p.max_new, p.topk, p.layers, p.temp, p.seed = max_new, topk, list(layers), temp, seed
    p.device_topk = device_topk
    recs = []
    stats = gen.run([gen.tokenize(t, True) for t in prompts], p, 64, recs.append, list(indices))
    return {int(r["index"]): r for r in recs}, stats


def bf16(a):
    return torch.from_numpy(a).view(torch.bfloat16).float().numpy()


@pytest.fixture(scope="module")
def batched(tiny_target_gguf):
    return generate(engine(tiny_target_gguf, 4), PROMPTS)[0]


def test_batched_equals_sequential_and_plain_greedy(tiny_target_gguf, batched):
    """Four sequences in flight, refilled as they end, give the tokens of one-at-a-time generation
    and of the runtime's plain greedy decoding (f32 weights: no near-ties flip on this model)."""
    seq, stats = generate(engine(tiny_target_gguf, 1), PROMPTS)
    assert sorted(batched) == sorted(seq) == list(range(len(PROMPTS)))
    with ppow.Generator(tiny_target_gguf, n_ctx=256, n_threads=1) as g:
        for i, text in enumerate(PROMPTS):
            b, s = batched[i], seq[i]
            assert np.array_equal(b["tokens"], s["tokens"]) and np.array_equal(b["greedy"], s["greedy"]), i
            np.testing.assert_allclose(bf16(b["hidden_bf16"]), bf16(s["hidden_bf16"]), rtol=0.02, atol=0.02)
            P = b["prompt_len"]
            ref = g.generate(text, n_predict=24)
            assert list(b["tokens"][P:]) == ref.tokens, i  # 24 fed back, or fewer before an end token
            assert b["stop"] == ("length" if len(ref.tokens) == 24 else "eos")
    assert stats["sequences"] == len(PROMPTS) and stats["new_tokens"] == sum(
        len(r["tokens"]) - r["prompt_len"] for r in seq.values())


def test_record_layout_features_and_topk(tiny_target_gguf, batched):
    """Per position: the input token, its label, one-hot labels on prompt rows, the full-softmax
    top-k on generated rows, and features equal to Generator.features() up to bf16 rounding."""
    with ppow.Generator(tiny_target_gguf, n_ctx=256, n_threads=1) as g:
        for i in (0, 5):
            r = batched[i]
            toks, P = [int(t) for t in r["tokens"]], r["prompt_len"]
            n = len(toks)
            assert r["topk_ids"].shape == (n, 8) and r["hidden_bf16"].shape == (n, 2, 64)
            assert list(r["greedy"][:P - 1]) == toks[1:P] and not r["scored"][:P - 1].any()
            assert (r["topk_probs"][:P - 1, 0] == 1).all() and (r["topk_probs"][:P - 1, 1:] == 0).all()
            assert r["scored"][P - 1:].all()
            assert list(r["greedy"][P - 1:-1]) == toks[P:]  # greedy trajectory: each label is fed back
            logits, feats = g.features(toks, layers=[0, 1], n_last=n - P + 1)
            ours = bf16(r["hidden_bf16"]).transpose(1, 0, 2)
            np.testing.assert_allclose(ours, feats, rtol=1e-2, atol=1e-2)
            p = torch.softmax(torch.from_numpy(logits).double(), -1).numpy()
            top = np.argsort(-p, axis=1, kind="stable")[:, :8]
            assert np.array_equal(r["topk_ids"][P - 1:], top)
            np.testing.assert_allclose(r["topk_probs"][P - 1:], np.take_along_axis(p, top, 1), atol=1e-5)


def test_device_topk_equals_the_host_path(tiny_target_gguf, batched):
    """The softmax/top-k/argmax computed in the decode graph (llama.cpp's backend sampling, here on the
    CPU backend) record what the host path records: the same trajectory, argmax, top-k ids in the same
    order and features, probabilities within float rounding; sampled data is refused there, and the
    engine detaches its samplers (a host run after it is unchanged)."""
    gen = engine(tiny_target_gguf, 4)
    dev, stats = generate(gen, PROMPTS, device_topk=True)
    assert sorted(dev) == sorted(batched) and stats["sequences"] == len(PROMPTS)
    assert stats["device_rows"] == sum(int(r["scored"].sum()) for r in dev.values())  # every scored row
    for i, h in batched.items():
        d = dev[i]
        for key in ("tokens", "greedy", "next", "scored", "topk_ids", "hidden_bf16"):
            assert np.array_equal(d[key], h[key]), (i, key)
        np.testing.assert_allclose(d["topk_probs"], h["topk_probs"], rtol=1e-5, atol=1e-7)
    with pytest.raises(_core.EngineError, match="greedy data only"):
        generate(gen, PROMPTS[:2], temp=0.8, device_topk=True)
    again, stats = generate(gen, PROMPTS)
    assert stats["device_rows"] == 0
    assert all(np.array_equal(again[i]["topk_probs"], batched[i]["topk_probs"]) for i in batched)
    # where it runs by default: on a GPU, greedy data only
    assert not datagen.device_topk("auto", 0, 0.0) and datagen.device_topk("auto", 5, 0.0)
    assert not datagen.device_topk("auto", 5, 0.8) and datagen.device_topk("device", 0, 0.0)
    with pytest.raises(ValueError, match="greedy data only"):
        datagen.device_topk("device", 5, 0.8)
    with pytest.raises(ValueError, match="--topk-on"):
        datagen.device_topk("gpu", 5, 0.0)


def test_sampling_is_seeded_per_prompt(tiny_target_gguf):
    gen = engine(tiny_target_gguf, 3)
    a, _ = generate(gen, PROMPTS[:6], temp=1.0, seed=5)
    # other order, other batch mates, same prompt indices (as after a resume): the same draws
    b, _ = generate(gen, PROMPTS[:6][::-1], temp=1.0, seed=5, indices=range(5, -1, -1))
    c, _ = generate(gen, PROMPTS[:6], temp=1.0, seed=6)
    g, _ = generate(gen, PROMPTS[:6])
    assert all(np.array_equal(a[i]["tokens"], b[i]["tokens"]) for i in range(6))
    assert any(not np.array_equal(a[i]["tokens"], c[i]["tokens"]) for i in range(6))
    assert any(not np.array_equal(a[i]["tokens"], g[i]["tokens"]) for i in range(6))


def test_engine_errors(tiny_target_gguf):
    gen = engine(tiny_target_gguf, 2)
    n = gen.n_layer
    for layers, match in (([n], "final norm"), ([n + 3], "does not exist")):
        with pytest.raises(_core.EngineError, match=match):
            generate(gen, PROMPTS[:2], layers=layers)
    with pytest.raises(_core.EngineError, match="empty"):
        gen.run([[]], _core.DataGenParams(), 64, lambda r: None)
    with pytest.raises(_core.EngineError, match="one per prompt"):
        gen.run([[1, 2]], _core.DataGenParams(), 64, lambda r: None, [0, 1])
    with pytest.raises(_core.EngineError, match="outside the vocabulary"):
        gen.run([[1, 10**7]], _core.DataGenParams(), 64, lambda r: None)
    with pytest.raises(_core.EngineError, match="raise n_ctx"):
        gen.run([[1] * 80], _core.DataGenParams(), 64, lambda r: None)
    with pytest.raises(_core.EngineError, match="exceeds the context"):
        gen.run([[1]], _core.DataGenParams(), 10**6, lambda r: None)
    with pytest.raises(RuntimeError, match="boom"):  # a failing callback stops the run cleanly
        gen.run([[1, 2]] * 3, _core.DataGenParams(), 64, lambda r: (_ for _ in ()).throw(RuntimeError("boom")))
    assert len(generate(gen, PROMPTS[:3])[0]) == 3  # and the engine stays usable


def _write_prompts(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": PROMPTS[i % len(PROMPTS)] + f" {i}", "category": f"c{i % 3}"}) + "\n")
    return str(path)


def _cli(*args):
    return [sys.executable, "-m", "ppow.train.cli", "data", *map(str, args)]


def _load_by_index(path):
    c = Cache(path)
    out = {}
    for sh in c.meta["shards"]:
        with open(os.path.join(path, sh["file"].replace(".safetensors", ".json"))) as f:
            side = json.load(f)
        out.update({i: None for i in side["index"]})
    order = [i for sh in c.meta["shards"]
             for i in json.load(open(os.path.join(path, sh["file"].replace(".safetensors", ".json"))))["index"]]
    for j, i in enumerate(order):
        s, e = int(c.seq_start[j]), int(c.seq_start[j] + c.seq_len[j])
        out[i] = (c.tokens[s:e].tolist(), c.greedy[s:e].tolist(), c.hidden[s:e].float().numpy())
    return c, out


def test_cache_resume_after_kill_and_refusals(tiny_target_gguf, tmp_path):
    n = 300
    prompts = _write_prompts(tmp_path / "p.jsonl", n)
    common = ["--target", tiny_target_gguf, "--prompts", prompts, "--max-new", 24, "--topk", 4, "--layers", "0,1",
              "--n-parallel", 3, "--threads", 1, "--shard-size", 4, "--quiet"]
    full = tmp_path / "full"
    out = subprocess.run(_cli(*common, "-o", full), capture_output=True, text=True, check=True)
    summary = json.loads(out.stdout)
    assert summary["sequences"] == n and summary["complete"] and summary["layers"] == [0, 1]

    # Kill a second run once it has written a couple of shards, then resume it.
    part = tmp_path / "part"
    proc = subprocess.Popen(_cli(*common, "-o", part), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len([f for f in os.listdir(part) if f.endswith(".json") and
                                          f.startswith("shard")] if part.exists() else []) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len([f for f in os.listdir(part) if f.startswith("shard") and f.endswith(".json")])
    assert 2 <= written < n // 4, written
    out = subprocess.run(_cli(*common, "-o", part), capture_output=True, text=True, check=True)
    resumed = json.loads(out.stdout)
    assert resumed["resumed_sequences"] >= 8 and resumed["sequences"] == n
    assert resumed["sequences_this_run"] == n - resumed["resumed_sequences"]  # no finished prompt redone
    c_full, a = _load_by_index(str(full))
    c_part, b = _load_by_index(str(part))
    assert sorted(a) == sorted(b) == list(range(n))
    for i in range(n):
        assert a[i][0] == b[i][0] and a[i][1] == b[i][1], i
        np.testing.assert_allclose(a[i][2], b[i][2], rtol=0.02, atol=0.02)
    assert c_part.meta["complete"] and not [f for f in os.listdir(part) if f.endswith(".tmp")]

    # The KD stage trains on the engine's cache as on the old one.
    from ppow.train import cli

    assert cli.main(["kd", "--cache", str(full), "--target", tiny_target_gguf, "--steps", "2", "--hidden", "32",
                     "--heads", "2", "-o", str(tmp_path / "kd"), "--quiet"]) == 0

    # Refusals: other layers, other settings, another target (a copy with one changed byte).
    for extra, match in ((["--layers", "1"], "layers"), (["--max-new", "8"], "other settings")):
        args = [a if a != "0,1" or extra[0] != "--layers" else "1" for a in common]
        if extra[0] == "--max-new":
            args = common[:common.index("--max-new")] + ["--max-new", 8] + common[common.index("--max-new") + 2:]
        r = subprocess.run(_cli(*args, "-o", full), capture_output=True, text=True)
        assert r.returncode == 2 and match in r.stderr and r.stderr.count("\n") == 1, r.stderr
    other = tmp_path / "other.gguf"
    data = bytearray(open(tiny_target_gguf, "rb").read())
    data[-1] ^= 1
    other.write_bytes(bytes(data))
    with pytest.raises(TargetMismatch):
        datagen.build_engine_cache(str(other), str(full), [{"text": "x"}] * n, max_new=24, topk=4, layers=[0, 1],
                                   n_parallel=3, threads=1, shard_size=4, progress=False)
    with pytest.raises(TargetMismatch):
        Cache(str(full), expect_target_sha256="0" * 64)


def test_cli_layer_errors(tiny_target_gguf, tmp_path):
    prompts = _write_prompts(tmp_path / "p.jsonl", 2)
    for layers in ("2", "0,x", "-1"):
        r = subprocess.run(_cli("--target", tiny_target_gguf, "--prompts", prompts, "--layers", layers, "--quiet",
                                "-o", tmp_path / f"c{layers}"), capture_output=True, text=True)
        assert r.returncode == 2 and "--layers" in r.stderr and r.stderr.count("\n") == 1, (layers, r.stderr)
    r = subprocess.run(_cli("--target", tmp_path / "missing.gguf", "--prompts", prompts, "--backend", "engine",
                            "-o", tmp_path / "m"), capture_output=True, text=True)
    assert r.returncode == 2 and "not found" in r.stderr, r.stderr


def test_default_layers_follow_eagle3():
    assert datagen.default_layers(18) == [2, 9, 15]  # Gemma 3 270M
    assert datagen.default_layers(30) == [2, 15, 27]  # SmolLM2-135M
    assert datagen.default_layers(2) == [1, 1, 1]
    with pytest.raises(ValueError, match="out of range"):
        datagen.parse_layers("0,18", 18)
