"""ppow-bench: the CLI end to end on the tiny models, the output checker, prompt loading, and one
run on the real Gemma 3 270M target drafting for itself."""
import json

import pytest

from ppow.bench import cli
from ppow.bench.analysis import check_outputs, first_mismatch, spread
from ppow.bench.prompts import load_prompts

PROMPTS = [
    {"question_id": 1, "category": "writing", "turns": ["The quick brown fox", "second turn is ignored"]},
    {"question_id": 2, "category": "writing", "turns": ["Once upon a time there was a little robot"]},
    # Long enough (> 512 tokens, llama-cpp-python's batch) to need a context beyond one batch.
    {"question_id": 3, "category": "coding", "turns": ["def add(a, b):\n    return a + b\nprint(add(2, 3))\n" * 40]},
]
PNGS = ("speedup_by_category.png", "tau_by_k.png", "acceptance_by_position.png")


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "specbench.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), encoding="utf-8")
    return str(path)


def run_cli(args):
    # One thread: on a machine shared with other jobs, several threads spinning on busy cores make
    # every run many times slower; speed is not under test here.
    rc = cli.main([str(a) for a in args] + ["--threads", "1"])
    outdir = args[args.index("-o") + 1]
    with open(f"{outdir}/report.json", encoding="utf-8") as f:
        return rc, json.load(f)


def test_cli_tiny_models(tmp_path, prompt_file, tiny_target_gguf, tiny_drafter_gguf):
    out = tmp_path / "out"
    rc, rep = run_cli(["--prompts", prompt_file, "--target", tiny_target_gguf, "--drafter", f"tiny={tiny_drafter_gguf}",
                       "-n", 8, "--k", "1,2", "--auto", "--template", "raw",
                       "--peers", "llama-cpp-python,hf", "-o", out])
    assert rc == 0
    names = [s["name"] for s in rep["systems"]]
    assert names == ["ppow plain", "ppow tiny k=1", "ppow tiny k=2", "ppow tiny auto", "llama-cpp-python plain",
                     "llama-cpp-python tiny k=1", "llama-cpp-python tiny k=2"]
    # Peers that cannot run a configuration say why.
    reasons = {s["system"]: s["reason"] for s in rep["skipped"]}
    assert "no HF checkpoint" in reasons["hf tiny"]
    assert "llama-cpp-python auto" in reasons

    assert rep["machine"]["build"]["llama_cpp_python"] and rep["machine"]["cpu_count"]
    st = rep["settings"]
    assert st["n_prompts"] == 3 and st["categories"] == ["coding", "writing"] and st["k"] == [1, 2] and st["greedy"]

    # Every system ran every prompt once; speculative outputs equal their own plain ones.
    assert len(rep["runs"]) == 3 * len(names)
    assert rep["n_checked"] == 3 * 3 and rep["n_checked_peers"] == 3 * 2  # ppow k=1, k=2, auto; llama k=1, k=2
    assert rep["mismatches"] == [] and rep["peer_mismatches"] == [] and rep["ok"] is True
    for name in names:
        res = rep["results"][name]
        assert set(res["by_category"]) == {"coding", "writing"}
        o = res["overall"]
        assert o["n_runs"] == 3 and 0 < o["n_generated"] <= 24
        for key in ("speedup", "tokens_per_second", "tau"):
            assert set(o[key]) == {"median", "q1", "q3", "min", "max", "n"}
            assert o[key]["min"] <= o[key]["q1"] <= o[key]["median"] <= o[key]["q3"] <= o[key]["max"]
    assert rep["results"]["ppow plain"]["overall"]["tau_pooled"] == 1.0
    assert rep["results"]["ppow plain"]["overall"]["speedup"]["median"] == 1.0
    for name in ("ppow tiny k=1", "ppow tiny k=2", "llama-cpp-python tiny k=1", "llama-cpp-python tiny k=2"):
        o = rep["results"][name]["overall"]
        k = int(name[-1])
        assert 1.0 < o["tau_pooled"] <= k + 1
        acc = o["acceptance_by_position"]
        assert len(acc["drafted"]) == k and all(0 <= r <= 1 for r in acc["rate"])

    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Overall" in md and "## Speedup by category" in md and "OK: all 9" in md and "0 of 6 speculative greedy runs" in md
    assert "hf tiny: skipped: no HF checkpoint" in md
    for png in PNGS:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_hf_peer(tmp_path, prompt_file, tiny_target_gguf, tiny_drafter_gguf, tiny_drafter_hf_dir):
    out = tmp_path / "out"
    rc, rep = run_cli(["--prompts", prompt_file, "--target", tiny_target_gguf, "--drafter", f"tiny={tiny_drafter_gguf}",
                       "--drafter-hf", f"tiny={tiny_drafter_hf_dir}", "-n", 6, "--k", "2", "--no-auto",
                       "--template", "raw", "--peers", "hf", "--hf-limit", 1, "-o", out])
    assert rc == 0
    hf = {r["system"]: r for r in rep["runs"] if r["system"].startswith("hf ")}
    assert set(hf) == {"hf plain", "hf tiny k=2"}  # --hf-limit 1: one prompt each
    assert hf["hf plain"]["tau"] == 1.0 and hf["hf tiny k=2"]["tau"] > 1.0
    assert rep["peer_mismatches"] == []
    assert "prompt processing included" in next(s["timing"] for s in rep["systems"] if s["name"] == "hf plain")


def make_reduced_drafter(src, dst, d2t, unk=0):
    """Drafter checkpoint whose vocabulary is the target tokens d2t (rows sliced from src)."""
    import shutil

    import numpy as np
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["vocab_size"] = len(d2t)
    (dst / "config.json").write_text(json.dumps(cfg))
    t = load_file(str(dst / "model.safetensors"))
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        t[k] = np.ascontiguousarray(t[k][d2t])
    save_file(t, str(dst / "model.safetensors"))
    save_file({"d2t": np.asarray(d2t, dtype=np.int64), "unk_draft_id": np.array([unk], dtype=np.int64)},
              str(dst / "draft_vocab.safetensors"))


def test_cli_reduced_vocab_drafter(tmp_path, prompt_file, tiny_target_gguf, tiny_drafter_hf_dir):
    import numpy as np
    from ppow_convert import convert_drafter

    make_reduced_drafter(tiny_drafter_hf_dir, tmp_path / "small", np.arange(3, 512, 2), unk=4)
    small = convert_drafter(str(tmp_path / "small"), tiny_target_gguf, str(tmp_path / "small.gguf"), "f32")
    out = tmp_path / "out"
    rc, rep = run_cli(["--prompts", prompt_file, "--target", tiny_target_gguf, "--drafter", f"small={small}",
                       "--drafter-hf", f"small={tmp_path / 'small'}", "-n", 8, "--k", "3", "--no-auto",
                       "--template", "raw", "--peers", "llama-cpp-python,hf", "-o", out])
    assert rc == 0 and rep["mismatches"] == [] and rep["n_checked"] == 3 and rep["n_checked_peers"] >= 3
    lcp = next(s for s in rep["systems"] if s["name"] == "llama-cpp-python small k=3")
    assert any("d2t" in n for n in lcp["notes"])
    # Both engines map drafts through d2t; with the same drafter and window they see the same τ
    # (llama-cpp-python spends one extra undrafted step at the start).
    acc = lambda name: rep["results"][name]["overall"]["acceptance_by_position"]["accepted"]
    assert sum(acc("ppow small k=3")) > 0 and sum(acc("llama-cpp-python small k=3")) > 0
    reasons = {s["system"]: s["reason"] for s in rep["skipped"]}
    assert "reduced draft vocabulary" in reasons["hf small"]
    assert not any(s["family"] == "hf" for s in rep["systems"])  # no assisted system: no HF plain either


def test_cli_reports_a_broken_speculative_output(tmp_path, prompt_file, tiny_target_gguf, tiny_drafter_gguf,
                                                 monkeypatch):
    from ppow.bench.runners import PpowRunner

    real_run = PpowRunner.run

    def corrupt(self, ids):  # the k=2 system "gets one token wrong"
        m = real_run(self, ids)
        if self.params.get("draft_max") == 2 and m.tokens:
            m.tokens[-1] += 1
        return m

    monkeypatch.setattr(PpowRunner, "run", corrupt)
    out = tmp_path / "out"
    rc, rep = run_cli(["--prompts", prompt_file, "--target", tiny_target_gguf, "--drafter", tiny_drafter_gguf,
                       "-n", 8, "--k", "2", "--no-auto", "--peers", "none", "--template", "raw", "-o", out])
    assert rc == 1 and rep["ok"] is False
    name = f"ppow {tiny_drafter_gguf.rsplit('/', 1)[-1].removesuffix('.gguf')} k=2"  # a bare path is named by its stem
    assert len(rep["mismatches"]) == 3 and {m["system"] for m in rep["mismatches"]} == {name}
    assert "FAILED: 3 of 3" in (out / "report.md").read_text(encoding="utf-8")


def test_prompt_lookup_peer_and_reference_drafter(tmp_path, prompt_file, tiny_target_gguf, tiny_drafter_gguf):
    """llama-cpp-python's prompt-lookup decoding runs as a peer with its own plain baseline; it drafts
    from repeated n-grams, so on prompts with repeats it drafts something, and its drafts are judged.
    A --reference drafter runs with the auto policy only."""
    rows = [{"question_id": i, "category": "writing", "turns": [("a b c d a b c d a b c d " * 3).strip()]} for i in range(2)]
    prompts = tmp_path / "rep.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    rc, rep = run_cli(["--prompts", prompts, "--target", tiny_target_gguf, "-n", 12, "--k", "3", "--no-auto",
                       "--reference", f"old={tiny_drafter_gguf}", "--peers", "prompt-lookup", "--template", "raw",
                       "-o", out])
    assert rc == 0 and rep["peer_mismatches"] == [] and rep["mismatches"] == []
    names = [s["name"] for s in rep["systems"]]
    assert names == ["ppow plain", "ppow old auto", "llama-cpp-python plain", "llama-cpp-python prompt-lookup k=3"]
    acc = rep["results"]["llama-cpp-python prompt-lookup k=3"]["overall"]["acceptance_by_position"]
    assert len(acc["drafted"]) == 3 and acc["drafted"][0] > 0


def test_ppow_lookup_systems(tmp_path, tiny_target_gguf, tiny_drafter_gguf):
    """--lookup adds ppow's prompt lookup under auto, alone and beside each drafter, checked like every
    ppow system (whether auto drafts hangs on the tiny model's timings: not asserted)."""
    rows = [{"question_id": 1, "category": "writing",
             "turns": ["The quick brown fox jumps over the lazy dog. The quick brown fox"]}]
    prompts = tmp_path / "rep.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    rc, rep = run_cli(["--prompts", prompts, "--target", tiny_target_gguf, "--drafter", f"tiny={tiny_drafter_gguf}",
                       "-n", 16, "--k", "", "--lookup", "--peers", "none", "--template", "raw", "-o", out])
    assert rc == 0 and rep["mismatches"] == [] and rep["n_checked"] == 3
    names = [s["name"] for s in rep["systems"]]
    assert names == ["ppow plain", "ppow lookup auto", "ppow tiny auto", "ppow tiny auto+lookup"]


def test_first_mismatch_and_check_outputs():
    assert first_mismatch([1, 2, 3], [1, 2, 3]) is None
    assert first_mismatch([1, 2, 3], [1, 5, 3]) == 1
    assert first_mismatch([1, 2, 3], [1, 2]) == 2  # stopped early
    assert first_mismatch([], []) is None
    systems = [{"name": "plain", "baseline": None}, {"name": "spec", "baseline": "plain"}]
    run = lambda system, qid, toks: {"system": system, "qid": qid, "category": "c", "repeat": 0, "tokens": toks}
    runs = [run("plain", "a", [1, 2, 3]), run("spec", "a", [1, 2, 3]),
            run("plain", "b", [4, 5, 6]), run("spec", "b", [4, 5, 7])]
    bad = check_outputs(runs, systems)
    assert len(bad) == 1 and bad[0]["qid"] == "b" and bad[0]["position"] == 2
    assert bad[0]["expected"] == [6] and bad[0]["got"] == [7]


def test_spread():
    s = spread([3.0, 1.0, None, 2.0, 4.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 4.0, 4)
    assert s["q1"] <= s["median"] <= s["q3"]
    assert spread([None]) is None


def test_load_prompts(prompt_file, tmp_path):
    ps = load_prompts(prompt_file)
    assert [p.category for p in ps] == ["writing", "writing", "coding"]
    assert ps[0].text == "Question: The quick brown fox\nAnswer:" and ps[0].qid == "1"
    assert [p.qid for p in load_prompts(prompt_file, "raw", per_category=1)] == ["1", "3"]
    assert load_prompts(prompt_file, "raw")[2].text.startswith("def add(a, b):\n")
    assert load_prompts(prompt_file, "raw", limit=1)[0].text == "The quick brown fox"
    with pytest.raises(ValueError, match="unknown template"):
        load_prompts(prompt_file, "vicuna")
    with pytest.raises(ValueError, match="needs the target GGUF"):  # the target's own (tests/test_targets.py)
        load_prompts(prompt_file, "chat")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"category": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_prompts(str(bad))


def test_cli_argument_errors(prompt_file, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--prompts", prompt_file, "-o", str(tmp_path), "--k", "0"])
    with pytest.raises(SystemExit):
        cli.main(["--prompts", prompt_file, "-o", str(tmp_path), "--peers", "vllm"])
    with pytest.raises(SystemExit):
        cli.main(["--prompts", prompt_file, "-o", str(tmp_path), "--drafter", str(tmp_path / "missing.gguf")])
    assert cli.named_path("a=b/c.gguf") == ("a", "b/c.gguf") and cli.named_path("x/y.gguf") == ("y", "x/y.gguf")


@pytest.mark.real
def test_real_gemma_drafting_for_itself(tmp_path, gemma_gguf):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"question_id": 1, "category": "qa", "turns": ["What is the capital of France?"]}) + "\n"
                    + json.dumps({"question_id": 2, "category": "math", "turns": ["What is 12 times 7?"]}) + "\n",
                    encoding="utf-8")
    out = tmp_path / "out"
    rc, rep = run_cli(["--prompts", path, "--target", gemma_gguf, "--drafter", f"gemma={gemma_gguf}", "-n", 8,
                       "--k", "3", "--no-auto", "-o", out])
    assert rc == 0 and rep["mismatches"] == [] and rep["peer_mismatches"] == []
    assert rep["n_checked"] == 2 and rep["n_checked_peers"] == 2
    for name in ("ppow gemma k=3", "llama-cpp-python gemma k=3"):
        assert rep["results"][name]["overall"]["tau_pooled"] > 1.0  # the same model agrees with itself


FAKE_SPECULATIVE_SIMPLE = """#!{python}
# Stand-in for llama.cpp's llama-speculative-simple: echoes the prompt, then the continuation the test
# stored for it (two tokens past -n, as the binary may run on), and its stats in the binary's format.
import json, os, sys
a = sys.argv
if a[a.index("--spec-draft-n-max") + 1] == "2":
    sys.exit("eagle3: cannot extract the target's features")
prompt = open(a[a.index("-f") + 1], encoding="utf-8").read()
text = json.load(open(os.environ["FAKE_OUTPUTS"], encoding="utf-8"))[prompt]
print(prompt + text)
print("0.00.7 I decoded   10 tokens in    0.500 seconds, speed:   20.0 t/s", file=sys.stderr)
print("0.00.7 I n_drafted = 8", file=sys.stderr)
print("0.00.7 I n_accept  = 4", file=sys.stderr)
"""


def test_llama_cpp_binary_peer(tmp_path, prompt_file, tiny_target_gguf, tiny_drafter_gguf, monkeypatch):
    """ppow-bench --llama-cpp-bin: llama.cpp's runtime as a peer at each k, its output checked as text
    against llama.cpp's one-token decoding over the common length, a k it cannot run skipped with the
    binary's reason, and the head-to-head table."""
    import sys

    import ppow
    from ppow.bench.prompts import load_prompts

    outputs = {}
    with ppow.Generator(tiny_target_gguf, n_ctx=2048, n_threads=1, batch_invariant=False) as g:
        for p in load_prompts(prompt_file, "raw"):
            out = g.generate(g.tokenize(p.text, add_special=True), n_predict=10)
            outputs[p.text] = g.detokenize(out.tokens)
    (tmp_path / "outputs.json").write_text(json.dumps(outputs), encoding="utf-8")
    monkeypatch.setenv("FAKE_OUTPUTS", str(tmp_path / "outputs.json"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "llama-speculative-simple"
    fake.write_text(FAKE_SPECULATIVE_SIMPLE.format(python=sys.executable), encoding="utf-8")
    fake.chmod(0o755)

    out = tmp_path / "out"
    rc, rep = run_cli(["--prompts", prompt_file, "--target", tiny_target_gguf, "--drafter", f"tiny={tiny_drafter_gguf}",
                       "-n", 8, "--k", "1,2", "--no-auto", "--template", "raw", "--peers", "none",
                       "--llama-cpp-bin", bindir, "-o", out])
    assert rc == 0
    names = [s["name"] for s in rep["systems"]]
    assert names == ["ppow plain", "ppow tiny k=1", "ppow tiny k=2", "llama.cpp plain", "llama.cpp tiny k=1"]
    reasons = {s["system"]: s["reason"] for s in rep["skipped"]}
    assert "cannot extract the target's features" in reasons["llama.cpp tiny k=2"]
    assert rep["peer_mismatches"] == [] and rep["n_checked_peers"] == 3
    o = rep["results"]["llama.cpp tiny k=1"]["overall"]
    assert o["tokens_per_second"]["median"] == pytest.approx(20.0) and o["tau_pooled"] == pytest.approx(10 / 6)
    (h2h,) = rep["head_to_head"]
    assert h2h["ppow"] == "ppow tiny k=1" and h2h["peer"] == "llama.cpp tiny k=1" and h2h["ratio"]["n"] == 3
    assert "## Head to head" in (out / "report.md").read_text(encoding="utf-8")

    # A different continuation is reported as the peer's mismatch, not as ppow's failure.
    outputs = {t: " zzz" + o for t, o in outputs.items()}
    (tmp_path / "outputs.json").write_text(json.dumps(outputs), encoding="utf-8")
    rc, rep = run_cli(["--prompts", prompt_file, "--target", tiny_target_gguf, "--drafter", f"tiny={tiny_drafter_gguf}",
                       "-n", 8, "--k", "1", "--no-auto", "--template", "raw", "--peers", "none",
                       "--llama-cpp-bin", bindir, "-o", out])
    assert rc == 0 and len(rep["peer_mismatches"]) == 3 and rep["mismatches"] == []


def test_llama_cpp_bin_must_hold_the_binary(prompt_file, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["--prompts", prompt_file, "-o", str(tmp_path), "--llama-cpp-bin", str(tmp_path)])
