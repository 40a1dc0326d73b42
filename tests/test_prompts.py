"""`ppow-train prompts`: benchmark decontamination, deduplication, the mix report, and self-synthesis
(Magpie) with SmolLM2-135M-Instruct: resumable, decontaminated, written atomically."""
import json
import os
import random

import pytest

from ppow.train import prompt_filters as F
from ppow.train import prompts as P

DEV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "specbench-dev.jsonl")
TRAIN = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "train-prompts.jsonl")

BENCH = [
    "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences "
    "and must-see attractions.",
    "Translate German to English: Die Katze sitzt auf der Matte und schaut aus dem Fenster in den Garten.",
    "Summarize the following article in two sentences: The city council voted on Tuesday to expand the bike "
    "lane network by forty kilometres over the next three years, citing safety and congestion.",
    "What is the capital of Australia?",
]
UNRELATED = [
    "Write a haiku about autumn leaves falling on a quiet pond.",
    "How do I sort a list of dictionaries by a key in Python?",
    "Explain the difference between a virus and a bacterium for a ten-year-old.",
    "Give me three ideas for a birthday party for my grandmother who loves gardening.",
]


@pytest.fixture(scope="module")
def bench():
    return F.BenchmarkFilter(BENCH)


def _edit(text, rng, n_words):
    """Change n_words words of text (a lightly edited copy)."""
    words = text.split()
    for i in rng.sample(range(len(words)), n_words):
        words[i] = "something"
    return " ".join(words)


def test_filter_catches_planted_copies(bench):
    rng = random.Random(0)
    for i, b in enumerate(BENCH):
        assert bench.match(b) == i                                    # verbatim
        assert bench.match(b.upper().replace(",", " ;")) == i         # case, punctuation, spacing
        assert bench.match("Please help me with this: " + b + " Thanks a lot!") == i  # embedded
    for i in range(3):  # long prompts: a few words changed is still a copy
        assert bench.match(_edit(BENCH[i], rng, 2)) == i
    # a 13-word verbatim span inside an otherwise different request
    span = " ".join(BENCH[2].split()[5:18])
    assert bench.match("Write a poem that starts with these words: " + span + " and then talks about rain, "
                       "clouds, umbrellas, puddles, boots, wind, thunder and the smell of wet grass.") == 2


def test_filter_passes_unrelated_prompts(bench):
    for u in UNRELATED:
        assert bench.match(u) is None
    assert bench.match("What is the capital of France?") is None  # near but not a copy: 4 of 6 words shared


@pytest.mark.skipif(not os.path.isfile(DEV), reason="../shared/data/specbench-dev.jsonl is not beside the checkout")
def test_specbench_dev_copy_is_caught_and_train_prompts_pass():
    dev = F.read_benchmark_prompts(DEV)
    assert len(dev) >= 240  # every turn of the 240 entries
    filt = F.BenchmarkFilter(dev)
    rng = random.Random(1)
    for text in rng.sample(dev, 20):
        planted = "Hi! " + text.replace(".", " .") + " Please answer carefully."
        assert filt.match(planted) is not None, planted[:80]
    with open(TRAIN, encoding="utf-8") as f:
        train = [json.loads(line)["text"] for _, line in zip(range(300), f)]
    assert sum(filt.match(t) is not None for t in train) == 0


def test_deduper():
    d = F.Deduper()
    base = "Can you suggest some effective exercises to improve my posture while working at a desk all day?"
    assert d.add(base)
    assert not d.add(base.lower() + "  ")                  # exact after normalisation
    assert not d.add(base.replace("all day", "all day long"))  # near duplicate
    for u in UNRELATED:
        assert d.add(u)


def test_mix_report_counts_languages_and_lengths():
    texts = ["How do I bake bread at home?", "Comment faire du pain à la maison avec de la farine ?",
             "Wie backe ich das Brot zu Hause und mit der Hefe?", "如何在家烤面包？", "Как испечь хлеб дома?"]
    r = F.mix_report(texts)
    assert r["prompts"] == 5
    assert r["languages"] == {"en": 1, "fr": 1, "de": 1, "zh/ja": 1, "ru/cyrillic": 1}
    assert sum(r["words_by_bucket"].values()) == 5


def test_build_prompt_set_drops_copies_and_duplicates(tmp_path):
    bench_file = tmp_path / "bench.jsonl"
    bench_file.write_text("".join(json.dumps({"turns": [b]}) + "\n" for b in BENCH))
    synth = [(u, "self:x") for u in UNRELATED] + [(BENCH[0], "self:x"), (UNRELATED[0], "self:x"), ("hi", "self:x")]
    kept, report = P.build_prompt_set(synth, [("Tell me about " + BENCH[3].lower(), "inc")], [str(bench_file)])
    texts = sorted(r["text"] for r in kept)
    assert texts == sorted(UNRELATED)
    c = report["counts"]
    assert (c["benchmark_copy"], c["duplicate"], c["too_short"], c["kept"]) == (2, 1, 1, 4)


def test_prompts_cli_refuses_missing_exclude(tmp_path):
    from ppow.errors import PpowError
    from ppow.train.cli import run

    with pytest.raises(PpowError, match="--exclude"):
        run(["prompts", "--include", TRAIN, "-o", str(tmp_path / "p.jsonl")])
    assert not (tmp_path / "p.jsonl").exists()


def test_include_by_source_and_seeded_sample(tmp_path):
    """--include-source keeps the sources a regex matches; --include-limit takes a seeded sample of them."""
    from ppow.train.cli import run

    src = tmp_path / "mix.jsonl"
    rows = [{"text": f"Natalia sold {i} clips to her friends in April and half as many in May; how many in total?",
             "source": "gsm8k"} for i in range(30)] + \
           [{"text": f"Write a short story about a lighthouse keeper number {i} and a storm.", "source": "t0/story"}
            for i in range(30)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "math.jsonl"
    res = run(["prompts", "--include", str(src), "--include-source", "^gsm8k", "--include-limit", "12",
               "--exclude", "none", "-o", str(out), "--quiet"])
    kept = [json.loads(line) for line in open(out)]
    assert res["kept"] == len(kept) and 0 < len(kept) <= 12 and all(r["source"] == "gsm8k" for r in kept)
    again = tmp_path / "again.jsonl"
    run(["prompts", "--include", str(src), "--include-source", "^gsm8k", "--include-limit", "12",
         "--exclude", "none", "-o", str(again), "--quiet"])
    assert sorted(json.loads(line)["text"] for line in open(again)) == sorted(r["text"] for r in kept)


@pytest.mark.real
def test_self_synthesis_smollm2_resumes_and_decontaminates(smollm2_gguf, tmp_path):
    from ppow.train.cli import run

    out = tmp_path / "p.jsonl"
    bench_file = tmp_path / "bench.jsonl"
    bench_file.write_text(json.dumps({"turns": BENCH}) + "\n")
    args = ["prompts", "--target", smollm2_gguf, "--n", "6", "--max-new", "48", "--n-parallel", "6",
            "--threads", "2", "--exclude", str(bench_file), "-o", str(out), "--quiet"]
    res = run(args)
    raw = [json.loads(x) for x in (tmp_path / "p.jsonl.raw.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in raw) == list(range(6))
    assert res["synthesised"] == sum(r["stop"] == "eos" for r in raw) > 0  # an aligned model ends its turn
    # planted: a benchmark prompt among the synthesised ones is dropped on the next (resumed) build
    with open(tmp_path / "p.jsonl.raw.jsonl", "a") as f:
        f.write(json.dumps(dict(index=6, stop="eos", n_tokens=20, text=BENCH[0])) + "\n")
        f.write('{"index": 7, "stop": "eos", "te')  # a killed writer's half line
    res2 = run(args[:4] + ["8"] + args[5:])
    assert res2["benchmark_copy"] >= 1
    kept = [json.loads(x)["text"] for x in out.read_text().splitlines()]
    assert BENCH[0] not in kept and len(kept) == res2["kept"]
    raw2 = [json.loads(x) for x in (tmp_path / "p.jsonl.raw.jsonl").read_text().splitlines() if x.endswith("}")]
    assert sorted(r["index"] for r in raw2 if r["index"] < 6) == list(range(6))  # nothing redone
    assert 7 in {r["index"] for r in raw2}  # the half line was regenerated
    # other settings: refused, nothing written
    with pytest.raises(Exception, match="other settings"):
        run(args[:-3] + ["--temp", "0.7", "-o", str(out), "--quiet"])


BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torch' or name == 'safetensors.torch':
            raise ImportError('torch is blocked in this process')
sys.meta_path.insert(0, _Block())
from ppow.train.cli import main
sys.exit(main(sys.argv[1:]))  # the console entry point, its error handling included
"""


def test_data_and_prompts_stages_run_without_torch(tiny_target_gguf, tmp_path):
    """The engine stages never import torch: on a CUDA machine a CUDA build of ppow and torch could not
    share a process (issue 22), and the data stage must still run there. The cache they write is what the
    torch reader (cache.py) loads."""
    import subprocess
    import sys

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in UNRELATED))
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "prompts", "--include", str(prompts), "--exclude", "none",
                        "-o", str(tmp_path / "clean.jsonl"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "data", "--target", str(tiny_target_gguf), "--prompts",
                        str(tmp_path / "clean.jsonl"), "--max-new", "6", "--layers", "1", "--n-parallel", "2",
                        "--threads", "1", "--host-threads", "2", "-o", str(tmp_path / "cache"), "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    from ppow.train.cache import Cache  # the torch side reads what the torch-free side wrote

    cache = Cache(str(tmp_path / "cache"))
    assert len(cache.seq_start) == len(UNRELATED)
    assert cache.hidden.dtype.itemsize == 2 and cache.hidden.shape[1] == 1


GERMAN = "Die Polizei hat am Montag zwei Männer festgenommen, die in der Stadt ein Auto gestohlen haben."


def test_german_sentences_are_cut_out_and_filtered():
    from ppow.train import translation_prompts as TP

    text = (GERMAN + " Das Projekt läuft seit dem 09. März in der Schule und ist noch nicht beendet. "
            "The police said that the car was found with the keys in it. "
            "Der <b>Verein</b> hat eine neue Seite für die Mitglieder. Und dann war es so, dass er")
    got = TP.german_sentences(text)
    assert got == [GERMAN, "Das Projekt läuft seit dem 09. März in der Schule und ist noch nicht beendet."]
    # a continuation cut at the token limit loses its last piece; one that ended keeps it
    assert TP.german_sentences(GERMAN) == [] and TP.german_sentences(GERMAN, ended=True) == [GERMAN]
    # a headline line has no full stop: it does not glue onto the next sentence
    assert TP.german_sentences("Neue Regeln für Radfahrer\n" + GERMAN, ended=True) == [GERMAN]
    was = "Was die Stadt mit dem Geld macht, ist noch nicht klar."
    assert TP.german_sentences(was, ended=True) == [was]  # "was" is German too
    assert TP.looks_german(GERMAN) and not TP.looks_german("The cat sat on the mat and looked at the garden.")
    assert TP.wmt_spacing("Es regnet, sagt er.") == "Es regnet , sagt er ."
    assert TP.wmt_spacing("Na gut... sagt er.") == "Na gut... sagt er ."


def test_translation_requests_are_seeded_framed_and_spaced_like_wmt():
    from ppow.train import translation_prompts as TP

    conts = [("Die Polizei", GERMAN[len("Die Polizei"):], True)] * 40
    a = TP.translation_requests(conts, seed=3)
    assert a == TP.translation_requests(conts, seed=3) and a != TP.translation_requests(conts, seed=4)
    assert len(a) == 40 and all(src == "translation:de-en" for _, src in a)
    spaced = [t for t, _ in a if "gestohlen haben ." in t]
    assert 5 < len(spaced) < 35  # about half
    forms = {next(f for f in TP.REQUEST_FORMS if t.startswith(f.split("{s}")[0])) for t, _ in a}
    assert len(forms) >= 3


@pytest.mark.real
@pytest.mark.skipif(not os.path.isfile(DEV), reason="needs ../shared/data/specbench-dev.jsonl")
def test_gemma_writes_german_translation_requests_and_resumes(gemma_gguf, tmp_path):
    """The real target (a base model) continues the German openings in German: requests come out,
    framed, decontaminated, and a resumed run redoes nothing."""
    from ppow.train.cli import run
    from ppow.train import translation_prompts as TP

    out = tmp_path / "t.jsonl"
    args = ["prompts", "--target", str(gemma_gguf), "--translation", "8", "--temp", "0.8", "--max-new", "64",
            "--n-parallel", "8", "--threads", "2", "--exclude", DEV, "-o", str(out), "--quiet"]
    res = run(args)
    assert res["translation_continuations"] == 8 and res["kept"] >= 1 and res["translation_kept"] == res["kept"]
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    for r in kept:
        assert r["category"] == "translation"
        assert any(r["text"].startswith(f.split("{s}")[0]) for f in TP.REQUEST_FORMS)
    raw = tmp_path / "t.jsonl.translation.raw.jsonl"
    before = raw.read_text()
    assert run(args)["kept"] == res["kept"] and raw.read_text() == before
