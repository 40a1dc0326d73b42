"""`ppow-train prompts`: chat prompts of the target's own kind, made offline by the target itself.

Self-synthesis (the Magpie recipe): an instruction-tuned model given only its chat template's opening
of a user turn (for SmolLM2 the system turn and `<|im_start|>user\n`, for Gemma `<start_of_turn>user\n`)
writes a user request and ends the turn with its end-of-turn token. Sampling at a temperature makes
each request different; the data engine (`_core.DataGen`) runs many of them in one batch. Requests that
do not end their turn within `max_new` tokens are dropped (cut off mid-request).

The synthesised requests, plus any `--include` prompt files (e.g. the long-answer subset of
train-prompts.jsonl), then pass the filters of prompt_filters.py: empty or too short/long texts out,
near duplicates out, and every near-copy of a benchmark prompt (`--exclude`, Spec-Bench's dev file in
the recipe) out. The result is one shuffled jsonl (`text`, `source`, `category`) that `ppow-train data
--template chat` answers, and a report (`OUT.report.json`) with every count and the length and
language mix.

Resumable: every finished request is appended to `OUT.raw.jsonl` as it arrives (a killed run loses only
the requests in flight; a truncated last line is ignored), and a resumed run skips the request indices
already there. A request's text depends only on (target, opening, temperature, seed, its index).
"""
from __future__ import annotations

import json
import os
import random
import re
import time

from . import prompt_filters as F

SENTINEL = "PPOWUSERTURN7319"

# train-prompts.jsonl sources whose answers run long (summaries, explanations, stories, free QA):
# the selection the Gemma drafter's long-answer cache was built from (train README, 2026-11-24).
LONG_ANSWER_SOURCES = re.compile(
    r"self-instruct|cnn_dailymail|xsum|multi_news|samsum|gigaword_generate_summary|"
    r"gigaword_write_an_article|adversarial_qa.*(answer|based_on|tell_what)|duorc.*(answer|build_story)|"
    r"quoref_(Answer|Find|Guess_Answer|What_Is)|ropes|cosmos_qa.*text|kilt_tasks|sciq_Direct|"
    r"wiki_qa_(Direct|Jeopardy|exercise)|glue_mrpc_generate|paws_labeled_final_(Rewrite|paraphrase_task)|"
    r"common_gen_(Given|Put|Example|topic_to|random|choice)|app_reviews_generate|dream_generate|"
    r"wiki_bio_(who|comprehension|key)|wiqa_what_is_the_final|social_i_qa_(Generate_answer|I_was)|"
    r"trec_fine_grained_open")


def user_turn_opening(target: str) -> str:
    """The target's chat-template text before a user message's content (BOS excluded)."""
    from ppow.errors import PpowError
    from ppow.templates import apply_template

    text = apply_template("chat", SENTINEL, target)
    cut = text.find(SENTINEL)
    if cut < 0:
        raise PpowError(f"{target}: its chat template does not place the user message verbatim; cannot find the "
                        "opening of a user turn")
    return text[:cut]


def _read_raw(path: str) -> dict:
    """index -> record of every complete line of a raw file. A killed writer may leave half a line: it is
    cut off here, so the next append starts on a line of its own."""
    done = {}
    if os.path.exists(path):
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[int(r["index"])] = r
    return done


def synthesize(target: str, raw_path: str, n: int, *, temp: float = 1.0, max_new: int = 128, n_parallel: int = 32,
               threads: int = 0, n_gpu_layers: int = 0, seed: int = 0, progress: bool = True,
               openings: list | None = None) -> dict:
    """Appends requests 0..n-1 not yet in raw_path; returns {index: record} of all of them.

    Request i continues openings[i % len(openings)] (default: the target's user-turn opening alone)."""
    from ppow import Generator, _core
    from ppow.errors import PpowError

    from .cache_files import sha256_of
    from .datagen import open_engine

    if n < 0 or not 1 <= n_parallel <= 256 or max_new < 1 or not temp > 0:
        raise ValueError("need --n >= 0, --n-parallel in [1, 256], --max-new >= 1 and --temp > 0 "
                         "(a greedy opening writes one request)")
    if openings is None:
        openings = [user_turn_opening(target)]
    if not openings or not all(isinstance(o, str) and o for o in openings):
        raise ValueError("openings must be non-empty strings")
    # "opening" (one) keeps the settings of raw files written before several openings existed
    where = dict(opening=openings[0]) if len(openings) == 1 else dict(openings=list(openings))
    settings = dict(target_sha256=sha256_of(target), **where, temp=temp, max_new=max_new, seed=seed)
    meta_path = raw_path + ".meta.json"
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if old != settings:
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            raise PpowError(f"{raw_path} was made with other settings {diff} (file, asked): use another -o")
    else:
        with open(meta_path + ".tmp", "w") as f:
            json.dump(settings, f, indent=1)
        os.replace(meta_path + ".tmp", meta_path)
    done = _read_raw(raw_path)
    todo = [i for i in range(n) if i not in done]
    if not todo:
        return done

    with Generator(target, n_ctx=256, n_threads=1) as tok:
        ids = [tok.tokenize(o, True, True) for o in openings]
        detok = tok.detokenize
        ctx_per_seq = max(len(i) for i in ids) + max_new + 2
        gen = open_engine(target, n_parallel, ctx_per_seq, threads, n_gpu_layers)
        params = _core.DataGenParams()
        params.max_new, params.topk, params.temp, params.seed, params.layers = max_new, 1, temp, seed, []

        from tqdm import tqdm

        bar = tqdm(total=n, initial=n - len(todo), desc="prompts", unit="req", disable=not progress)
        with open(raw_path, "a", encoding="utf-8") as out:
            def on_done(rec):
                new = [int(t) for t in rec["tokens"][rec["prompt_len"]:]]
                r = dict(index=int(rec["index"]), stop=rec["stop"], n_tokens=len(new), text=detok(new))
                out.write(json.dumps(r, ensure_ascii=False) + "\n")
                out.flush()
                done[r["index"]] = r
                bar.update(1)

            try:
                gen.run([ids[i % len(ids)] for i in todo], params, ctx_per_seq, on_done, todo)
            except _core.EngineError as e:
                raise PpowError(str(e)) from None
        bar.close()
    return done


def clean_request(text: str) -> str:
    """A synthesised request as a user would send it: trimmed, without a role label the model wrote."""
    text = text.strip()
    text = re.sub(r"^(user|User|USER)\s*[:\n]\s*", "", text)
    return text.strip()


def include_prompts(path: str, select: str | None, source_re: str | None = None) -> list:
    """(text, source) of an existing prompt file; select='long-answer' keeps LONG_ANSWER_SOURCES,
    source_re keeps the sources it matches (re.search)."""
    source_pat = re.compile(source_re) if source_re else None
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            obj = json.loads(line)
            text = obj.get("text") or (obj.get("turns") or [""])[0]
            source = obj.get("source", os.path.basename(path))
            if select == "long-answer" and not LONG_ANSWER_SOURCES.search(source):
                continue
            if source_pat is not None and not source_pat.search(source):
                continue
            out.append((text, source))
    return out


def build_prompt_set(synth: list, included: list, exclude_files: list, *, min_chars: int = 12,
                     max_chars: int = 4000, seed: int = 0) -> tuple:
    """Filters (text, source) pairs; returns (kept records, report)."""
    bench = F.BenchmarkFilter([p for path in exclude_files for p in F.read_benchmark_prompts(path)])
    dedup = F.Deduper()
    counts = dict(candidates=len(synth) + len(included), synthesised=len(synth), included=len(included),
                  too_short=0, too_long=0, duplicate=0, benchmark_copy=0)
    kept = []
    for text, source in synth + included:
        if len(text) < min_chars:
            counts["too_short"] += 1
        elif len(text) > max_chars:
            counts["too_long"] += 1
        elif bench.match(text) is not None:
            counts["benchmark_copy"] += 1
        elif not dedup.add(text):
            counts["duplicate"] += 1
        else:
            kept.append(dict(text=text, source=source, category=source.split(":")[0]))
    random.Random(seed).shuffle(kept)
    counts["kept"] = len(kept)
    report = dict(counts=counts, exclude=[os.path.abspath(p) for p in exclude_files],
                  mix=F.mix_report([r["text"] for r in kept]),
                  mix_by_source={s: F.mix_report([r["text"] for r in kept if r["category"] == s])
                                 for s in sorted({r["category"] for r in kept})})
    return kept, report


def run_prompts(args) -> dict:
    """The `ppow-train prompts` command."""
    from ppow.errors import PpowError

    if not args.exclude:
        raise PpowError("ppow-train prompts needs --exclude with the benchmark prompts that must never enter training "
                        "data (e.g. ../shared/data/specbench-dev.jsonl); pass --exclude none to skip on purpose")
    exclude = [] if args.exclude == ["none"] else args.exclude
    for p in exclude + [p for p in (args.include or [])]:
        if not os.path.isfile(p):
            raise PpowError(f"not a file: {p}")
    t0 = time.time()
    synth = []
    if args.n:
        raw = args.out + ".raw.jsonl"
        recs = synthesize(args.target, raw, args.n, temp=args.temp, max_new=args.max_new,
                          n_parallel=args.n_parallel, threads=args.threads, n_gpu_layers=args.n_gpu_layers,
                          seed=args.seed, progress=not args.quiet)
        name = os.path.splitext(os.path.basename(args.target))[0]
        ended = [r for i, r in sorted(recs.items()) if i < args.n and r["stop"] == "eos"]
        synth = [(clean_request(r["text"]), f"self:{name}") for r in ended]
        unfinished = sum(1 for i, r in recs.items() if i < args.n and r["stop"] != "eos")
    else:
        unfinished = 0
    translation_made = 0
    if args.translation:
        from .translation_prompts import GERMAN_OPENINGS, translation_requests

        recs = synthesize(args.target, args.out + ".translation.raw.jsonl", args.translation,
                          openings=list(GERMAN_OPENINGS), temp=args.temp, max_new=args.max_new,
                          n_parallel=args.n_parallel, threads=args.threads, n_gpu_layers=args.n_gpu_layers,
                          seed=args.seed, progress=not args.quiet)
        # opening + continuation: the continuation keeps its leading space (Gemma's tokenizer adds no space
        # prefix; a target whose detokenizer strips the first piece's space would glue the two words)
        made = [(GERMAN_OPENINGS[i % len(GERMAN_OPENINGS)], r["text"], r["stop"] == "eos")
                for i, r in sorted(recs.items()) if i < args.translation]
        translation_made = len(made)
        synth += translation_requests(made, seed=args.seed)
    included = [p for path in (args.include or []) for p in include_prompts(path, args.include_select, args.include_source)]
    if args.include_limit and len(included) > args.include_limit:  # a seeded sample, in file order
        keep = sorted(random.Random(args.seed).sample(range(len(included)), args.include_limit))
        included = [included[i] for i in keep]
    kept, report = build_prompt_set(synth, included, exclude, min_chars=args.min_chars, max_chars=args.max_chars,
                                    seed=args.seed)
    report["counts"]["synthesis_not_ended"] = unfinished
    if args.translation:
        report["counts"]["translation_continuations"] = translation_made
        report["counts"]["translation_sentences"] = sum(1 for _, src in synth if src.startswith("translation:"))
        report["counts"]["translation_kept"] = sum(1 for r in kept if r["category"] == "translation")
    report["seconds"] = round(time.time() - t0, 1)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in kept:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, args.out)
    with open(args.out + ".report.json.tmp", "w") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    os.replace(args.out + ".report.json.tmp", args.out + ".report.json")
    return dict(out=args.out, **report["counts"], seconds=report["seconds"])


def add_parser(sub):
    p = sub.add_parser("prompts", help="self-synthesised chat prompts (Magpie), deduplicated and decontaminated")
    p.add_argument("--target", default=None, help="instruction-tuned GGUF (default: the packaged Gemma 3 270M)")
    p.add_argument("--n", type=int, default=0, help="requests to synthesise (0: only filter --include files)")
    p.add_argument("--temp", type=float, default=1.0, help="sampling temperature of the synthesis")
    p.add_argument("--max-new", type=int, default=128, help="a request longer than this is dropped")
    p.add_argument("--n-parallel", type=int, default=32, help="requests in flight in one decode")
    p.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0 = all cores)")
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0, help="target layers on the GPU (-1 = all)")
    p.add_argument("--translation", type=int, default=0, metavar="N",
                   help="also N German continuations by the target, their sentences asked as German-to-English "
                        "requests (translation_prompts.py; a model that writes German: Gemma 3 270M)")
    p.add_argument("--include", action="append", default=None, help="existing prompt jsonl to add (repeatable)")
    p.add_argument("--include-select", choices=["all", "long-answer"], default="all",
                   help="long-answer: only train-prompts.jsonl sources with long answers")
    p.add_argument("--include-source", default=None, metavar="REGEX",
                   help="only included prompts whose source matches (e.g. '^gsm8k' for math word problems)")
    p.add_argument("--include-limit", type=int, default=0, help="a seeded random sample of this many included prompts")
    p.add_argument("--exclude", action="append", default=None,
                   help="benchmark prompts (jsonl with turns/text, or text) whose near-copies are dropped (repeatable; "
                        "required: 'none' to skip)")
    p.add_argument("--min-chars", type=int, default=12)
    p.add_argument("--max-chars", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", required=True, help="output jsonl (OUT.raw.jsonl, OUT.report.json beside it)")
    p.add_argument("--quiet", action="store_true")
    return p
