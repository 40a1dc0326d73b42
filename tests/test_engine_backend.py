"""GPU flags reach the models, and the engine says whether its output is exact on this backend.

Without a GPU device llama.cpp keeps every layer on the CPU whatever n_gpu_layers asks, so these run on
any machine: the flags must arrive (ModelParams.n_gpu_layers), the offloaded count must say 0, and the
CPU's exactness rules must still apply (they once required n_gpu_layers == 0 as asked, not as done).
"""
import pytest

import ppow
from ppow import _core

CUDA = "CUDA" in ppow.build_info()["backends"]


# -- the flags -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ngl,ngld", [(0, 0), (99, None), (-1, 3)])
def test_generator_passes_gpu_layers_to_both_models(tiny_target_gguf, tiny_drafter_gguf, ngl, ngld):
    with ppow.Generator(tiny_target_gguf, tiny_drafter_gguf, n_ctx=64, n_gpu_layers=ngl, n_gpu_layers_draft=ngld) as g:
        b = g.backend
    assert b["n_gpu_layers"] == ngl
    assert b["drafter_n_gpu_layers"] == (ngl if ngld is None else ngld)
    if not b["gpu_devices"]:
        assert b["gpu_layers"] == 0 and b["drafter_gpu_layers"] == 0


def test_generator_rejects_bad_gpu_layers(tiny_target_gguf):
    for bad in (-2, 1.5, True):
        with pytest.raises(ValueError, match="n_gpu_layers"):
            ppow.Generator(tiny_target_gguf, n_ctx=64, n_gpu_layers=bad)


def test_run_cli_flags(tiny_target_gguf):
    from ppow.cli.run import build_parser

    a = build_parser().parse_args(["-m", tiny_target_gguf, "-ngl", "99", "-ngld", "0", "-v"])
    assert (a.n_gpu_layers, a.n_gpu_layers_draft, a.verbose) == (99, 0, True)
    a = build_parser().parse_args(["--n-gpu-layers", "-1"])
    assert a.n_gpu_layers == -1 and a.n_gpu_layers_draft is None


def test_bench_flags_reach_every_engine(tmp_path, tiny_target_gguf, tiny_drafter_gguf):
    from ppow.bench import cli

    ap = cli.build_parser()
    args = ap.parse_args(["--prompts", "x.jsonl", "--drafter", f"tiny={tiny_drafter_gguf}", "--k", "2", "--lookup",
                          "-ngl", "0", "-ngld", "0", "--threads", "1", "-o", str(tmp_path)])
    cli.check_args(ap, args)
    closers = []
    try:
        systems = cli.ppow_systems(args, tiny_target_gguf, 128, closers)
        systems += cli.llamacpp_systems(args, tiny_target_gguf, 128, [], closers)
        assert {s.name for s in systems} >= {"ppow plain", "ppow tiny k=2", "ppow tiny auto", "ppow lookup auto",
                                             "llama-cpp-python plain", "llama-cpp-python tiny k=2"}
        for s in systems:
            if s.family == "ppow":
                b = s.runner.gen.backend
                assert b["n_gpu_layers"] == 0 and b["gpu_layers"] == 0, s.name
                if s.drafter not in (None, "lookup"):
                    assert b["drafter_n_gpu_layers"] == 0, s.name
            else:
                assert s.runner.llm.model_params.n_gpu_layers == 0, s.name
                if s.runner.draft is not None:
                    assert s.runner.draft.llm.model_params.n_gpu_layers == 0
    finally:
        for close in closers:
            close()
    # -ngld defaults to -ngl
    args = ap.parse_args(["--prompts", "x.jsonl", "-ngl", "7", "-o", str(tmp_path)])
    cli.check_args(ap, args)
    assert args.n_gpu_layers_draft == 7


def test_bench_rejects_bad_gpu_layers(tmp_path, capsys):
    from ppow.bench import cli

    with pytest.raises(SystemExit):
        cli.main(["--prompts", "x.jsonl", "-ngl", "-3", "-o", str(tmp_path)])
    assert "-ngl must be >= -1" in capsys.readouterr().err


def test_train_data_and_eval_flags_reach_model_params(tmp_path, tiny_target_gguf, monkeypatch):
    from ppow.train import cli, datagen

    a = cli.build_parser().parse_args(["data", "--target", tiny_target_gguf, "-ngl", "99", "-o", str(tmp_path)])
    assert a.n_gpu_layers == 99
    a = cli.build_parser().parse_args(["eval", "--drafter", "d", "--n-gpu-layers", "-1"])
    assert a.n_gpu_layers == -1
    assert cli.build_parser().parse_args(["data", "-o", str(tmp_path)]).n_gpu_layers == 0

    seen = []

    class Stop(Exception):
        pass

    class RecordingDataGen:
        def __init__(self, mp):
            seen.append(mp.n_gpu_layers)
            raise Stop

    monkeypatch.setattr(_core, "DataGen", RecordingDataGen)
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello world\n")
    with pytest.raises(Stop):
        cli.run(["data", "--target", tiny_target_gguf, "--backend", "engine", "--prompts", str(prompts), "-ngl", "5",
                 "--quiet", "-o", str(tmp_path / "cache")])
    with pytest.raises(Stop):
        datagen.build_engine_cache(tiny_target_gguf, str(tmp_path / "c2"), [{"text": "hi"}], progress=False)
    assert seen == [5, 0]


def test_train_llama_target_takes_gpu_layers(tiny_target_gguf):
    from ppow.train.data import load_target

    t = load_target(tiny_target_gguf, "llama", n_ctx=64, n_gpu_layers=0)
    assert t.llm.model_params.n_gpu_layers == 0


# -- exactness, said -------------------------------------------------------------------------------
def test_cpu_exactness_is_claimed_and_explained(tiny_target_gguf, tiny_drafter_gguf):
    if CUDA:
        pytest.skip("a CUDA build: the CPU rules are tested on CPU-only builds")
    with ppow.Generator(tiny_target_gguf, tiny_drafter_gguf, n_ctx=128, n_threads=2, n_gpu_layers=99) as g:
        assert g.exact and "CPU backend" in g.exact_reason and "7 rows" in g.exact_reason
        # the CPU rule holds (nothing was offloaded): F32 matrices, so every decode has two rows
        assert g.backend["pad_rows"] == 2 and g.backend["pads_single"] and not g.backend["ref_attention"]
        out = g.generate("The quick brown fox", n_predict=12, ignore_eos=True, draft_max=4)
        assert out.stats.exact and out.stats.exact_reason == g.exact_reason
        assert out.stats.n_drafted > 0


@pytest.mark.parametrize("kw,why", [
    (dict(verify_batch_max=8), "8 or more rows"),
    (dict(pad_rows=9), "8 or more rows"),
    (dict(batch_invariant=False, n_threads=2), "batch_invariant off"),
    (dict(batch_invariant=False, n_threads=1), "F32/F16/BF16 matrices"),  # the tiny target is F32
])
def test_settings_outside_the_cpu_rules_are_not_claimed_exact(tiny_target_gguf, tiny_drafter_gguf, kw, why):
    if CUDA:
        pytest.skip("a CUDA build")
    with ppow.Generator(tiny_target_gguf, tiny_drafter_gguf, n_ctx=128, **kw) as g:
        assert not g.exact and why in g.exact_reason
        reason = g.exact_reason
        spec = g.generate("Once upon a time", n_predict=8, ignore_eos=True, draft_max=3)
        plain = g.generate("Once upon a time", n_predict=8, ignore_eos=True, use_drafter=False)
    assert spec.stats.n_drafted > 0 and not spec.stats.exact and spec.stats.exact_reason == reason
    # A generation that verified no draft is plain decoding, whatever the backend.
    assert plain.stats.exact and "no draft was verified" in plain.stats.exact_reason


@pytest.mark.real
def test_quantized_target_rules(gemma_gguf, monkeypatch):
    # Gemma 3's quantized matrices take the same CPU path for one row as for several: no padding is
    # needed on one thread with flash attention; with two, ggml's use_ref switch (or, without it,
    # padding past 192 tokens) keeps one-token decodes off the split-KV kernel.
    if CUDA:
        pytest.skip("a CUDA build")
    with ppow.Generator(gemma_gguf, n_ctx=64, n_threads=1, batch_invariant=False) as g:
        assert g.exact and "flash attention on one thread" in g.exact_reason
        assert not g.backend["float_matrices"] and g.backend["pad_rows"] == 0
    with ppow.Generator(gemma_gguf, n_ctx=64, n_threads=2, batch_invariant=False, flash_attn="off") as g:
        assert not g.exact and "without flash attention" in g.exact_reason
    with ppow.Generator(gemma_gguf, n_ctx=64, n_threads=2) as g:
        assert g.exact and "use_ref switch" in g.exact_reason
        assert g.backend["ref_attention"] and not g.backend["pads_single"]
    monkeypatch.setenv("PPOW_CPU_REF", "0")
    with ppow.Generator(gemma_gguf, n_ctx=64, n_threads=2) as g:
        assert g.exact and "one-token decodes padded to two rows past 192" in g.exact_reason
        assert g.backend["pads_single"] and not g.backend["ref_attention"]


def test_run_cli_says_exactness(tiny_target_gguf, tiny_drafter_gguf, capsys):
    from ppow.cli import run

    assert run.main(["-m", tiny_target_gguf, "-md", tiny_drafter_gguf, "-p", "Hello", "-n", "6", "--ignore-eos",
                     "-t", "1", "-v"]) == 0
    err = capsys.readouterr().err
    assert "exact: yes" in err and "backend:" in err and "CPU backend" in err
    assert run.main(["-m", tiny_target_gguf, "-md", tiny_drafter_gguf, "-p", "Hello", "-n", "6", "--ignore-eos",
                     "-t", "1", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["exact"] is True and out["exact_reason"] and out["backend"]["gpu_layers"] == 0
