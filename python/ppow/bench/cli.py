"""ppow-bench: speed and τ of ppow's speculative decoding against plain decoding and peers.

On the prompts of a Spec-Bench file it runs, interleaved prompt by prompt in a shuffled order:
ppow plain (a Generator with only the target loaded), each drafter at each fixed window k and
with the auto policy, and the peers: llama-cpp-python's own speculative path with the same
drafter GGUF (plus its plain decoding) and Hugging Face assisted generation (plus HF plain).
Every greedy speculative output is checked token for token against its own engine's plain
output; a difference in ppow output is a failure (exit status 1, after the report is written);
the peers' differences are reported only (neither promises batch-invariant verification).

Writes OUTDIR/report.json, OUTDIR/report.md and PNG plots.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import sys
from pathlib import Path

PEERS = ("llama-cpp-python", "prompt-lookup", "hf")


def named_path(text: str) -> tuple[str, str]:
    """NAME=PATH, or a bare PATH named after its file stem (or directory name)."""
    name, sep, path = text.partition("=")
    if not sep:
        path = text
        name = Path(text.rstrip("/\\")).stem
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH or PATH, got {text!r}")
    return name, path


def int_list(text: str) -> list:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(k < 1 or k > 64 for k in ks):
        raise argparse.ArgumentTypeError("window sizes must be in 1..64")
    return sorted(set(ks))


def peer_list(text: str) -> list:
    peers = [p.strip() for p in text.split(",") if p.strip() and p.strip() != "none"]
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {', '.join(bad)} (choose from {', '.join(PEERS)}, none)")
    return peers


def build_parser() -> argparse.ArgumentParser:
    from ppow.templates import TEMPLATES

    ap = argparse.ArgumentParser(prog="ppow-bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", required=True, help="Spec-Bench jsonl (question_id, category, turns)")
    ap.add_argument("--target", help="target GGUF or name: gemma3-270m (default), smollm2-135m (ppow.models)")
    ap.add_argument("--drafter", action="append", type=named_path, default=[], metavar="NAME=PATH.gguf",
                    help="drafter GGUF (repeatable; a bare path is named after its file stem)")
    ap.add_argument("--reference", action="append", type=named_path, default=[], metavar="NAME=PATH.gguf",
                    help="a drafter run with the auto policy only (e.g. the previous release's), beside the "
                         "--drafter ones (repeatable)")
    ap.add_argument("--drafter-hf", action="append", type=named_path, default=[], metavar="NAME=DIR",
                    help="PyTorch drafter checkpoint dir for the HF peer, NAME matching a --drafter (repeatable)")
    ap.add_argument("-n", "--n-predict", type=int, default=64, help="tokens per prompt (default 64)")
    ap.add_argument("--limit", type=int, help="use the first N prompts (after --per-category)")
    ap.add_argument("--per-category", type=int, help="use the first N prompts of each category")
    ap.add_argument("--template", choices=sorted(TEMPLATES), default="qa",
                    help="prompt template: qa = 'Question: {q}\\nAnswer:' (default), raw = the first turn as is, "
                         "chat = one user turn in the target GGUF's own chat template (ppow.templates)")
    ap.add_argument("--temp", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed and system-order shuffle seed")
    ap.add_argument("--k", type=int_list, default=[2, 4, 8], metavar="K[,K...]", help="fixed draft windows (default 2,4,8)")
    ap.add_argument("--auto", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the auto window policy (default on)")
    ap.add_argument("--auto-max", type=int, default=8, help="draft_max for the auto policy (default 8)")
    ap.add_argument("--lookup", action="store_true",
                    help="also run ppow's prompt lookup under the auto policy: on the target alone ('ppow lookup "
                         "auto') and beside each drafter ('ppow NAME auto+lookup')")
    ap.add_argument("--repeats", type=int, default=1, help="passes over the prompts (default 1)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for every engine (default 0: all)")
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                    help="target layers on the GPU for every engine, ppow's and the llama.cpp peers' (-1: all; "
                         "default 0: CPU only); the report says per ppow system whether its output is exact "
                         "there (docs/gpu.md)")
    ap.add_argument("-ngld", "--n-gpu-layers-draft", type=int, default=None,
                    help="drafter layers on the GPU (default: as -ngl)")
    ap.add_argument("--ctx", type=int, default=0, help="context size (default: longest prompt + n + window + margin)")
    ap.add_argument("--peers", type=peer_list, default=["llama-cpp-python"],
                    help="comma-separated peers: llama-cpp-python (plain and with each token drafter), "
                         "prompt-lookup (llama-cpp-python's LlamaPromptLookupDecoding at each --k), hf, or none "
                         "(default llama-cpp-python)")
    ap.add_argument("--llama-cpp-bin", metavar="DIR",
                    help="directory with llama.cpp's llama-speculative-simple (built from the llama-cpp-python "
                         "sdist: ppow/bench/peer_llamacpp_bin.py): adds llama.cpp's own speculative runtime with "
                         "each drafter at each --k, and the head-to-head table")
    ap.add_argument("--peer-repack", action="store_true",
                    help="let llama-cpp-python repack weights (its default; ppow does not, for batch-invariant "
                         "verification, and neither does the peer unless this is given)")
    ap.add_argument("--hf-limit", type=int, default=4, help="run the HF peer on the first N prompts only (default 4)")
    ap.add_argument("--hf-target", help="HF checkpoint dir or GGUF for the HF peer (default: --target)")
    ap.add_argument("-o", "--outdir", required=True, help="directory for report.json, report.md and plots")
    return ap


def check_args(ap, args):
    if args.n_gpu_layers_draft is None:
        args.n_gpu_layers_draft = args.n_gpu_layers
    for name, v, lo in (("-n", args.n_predict, 1), ("--repeats", args.repeats, 1), ("--threads", args.threads, 0),
                        ("--auto-max", args.auto_max, 1), ("--hf-limit", args.hf_limit, 0), ("--ctx", args.ctx, 0),
                        ("-ngl", args.n_gpu_layers, -1), ("-ngld", args.n_gpu_layers_draft, -1)):
        if v < lo:
            ap.error(f"{name} must be >= {lo}")
    for flag in ("limit", "per_category"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.temp < 0:
        ap.error("--temp must be >= 0")
    names = [n for n, _ in args.drafter + args.reference]
    if len(set(names)) != len(names):
        ap.error("two drafters share a name; use NAME=PATH")
    for _, path in args.drafter + args.reference:
        if not os.path.isfile(path):
            ap.error(f"drafter not found: {path}")
    if args.llama_cpp_bin is not None:
        from ppow.bench.peer_llamacpp_bin import BINARY

        if not os.access(os.path.join(args.llama_cpp_bin, BINARY), os.X_OK):
            ap.error(f"--llama-cpp-bin: no executable {BINARY} in {args.llama_cpp_bin}")
    for name, path in args.drafter_hf:
        if name not in names:
            ap.error(f"--drafter-hf {name}: no --drafter named {name}")
        if not os.path.isdir(path):
            ap.error(f"--drafter-hf {name}: not a directory: {path}")


def machine_info() -> dict:
    import ppow

    return {"build": ppow.build_info(), "platform": platform.platform(), "processor": platform.processor(),
            "machine": platform.machine(), "python": platform.python_version(), "cpu_count": os.cpu_count()}


# -- systems ---------------------------------------------------------------------------------------
def ppow_systems(args, target, n_ctx, closers):
    from ppow import Generator
    from ppow.bench.runners import PpowRunner, System

    common = dict(n_predict=args.n_predict, temp=args.temp, seed=args.seed, ignore_eos=False)
    gkw = dict(n_ctx=n_ctx, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers,
               n_gpu_layers_draft=args.n_gpu_layers_draft)
    plain = Generator(target, **gkw)
    closers.append(plain.close)
    systems = [System("ppow plain", "ppow", PpowRunner(plain, use_drafter=False, **common),
                      notes=["a Generator with only the target loaded; the baseline of every ppow system"])]
    for name, path in args.drafter + args.reference:
        reference = (name, path) in args.reference
        if args.k and not reference:
            gen = Generator(target, path, **gkw)  # shared by this drafter's fixed-k systems
            closers.append(gen.close)
            for k in args.k:
                systems.append(System(f"ppow {name} k={k}", "ppow", PpowRunner(gen, draft_max=k, draft_policy="fixed", **common),
                                      baseline="ppow plain", drafter=name, policy="fixed", k=k))
        if args.auto or reference:
            gen = Generator(target, path, **gkw)
            closers.append(gen.close)  # the engine calibrates its costs on first use, outside timed runs
            systems.append(System(f"ppow {name} auto", "ppow",
                                  PpowRunner(gen, draft_max=args.auto_max, draft_policy="auto", **common),
                                  baseline="ppow plain", drafter=name, policy="auto",
                                  notes=[f"its own Generator (draft_max {args.auto_max}), calibrated in the untimed "
                                         f"warm-up; its cost model learns across prompts"]))
        if args.lookup and not reference:
            systems.append(lookup_system(f"ppow {name} auto+lookup", Generator(target, path, **gkw), name, args,
                                         common, closers))
    if args.lookup:
        systems.insert(1, lookup_system("ppow lookup auto", Generator(target, **gkw), "lookup", args, common, closers))
    return systems


def lookup_system(name, gen, drafter, args, common, closers):
    """ppow's prompt lookup (Generator.generate(lookup=True)) under the auto policy, its own Generator."""
    from ppow.bench.runners import PpowRunner, System

    closers.append(gen.close)
    return System(name, "ppow", PpowRunner(gen, draft_max=args.auto_max, draft_policy="auto", lookup=True, **common),
                  baseline="ppow plain", drafter=drafter, policy="auto",
                  notes=["prompt lookup (the tokens after the latest earlier occurrence of the last two tokens, or "
                         "the last one) wherever its learned acceptance beats plain decoding and the drafter"])


def llamacpp_systems(args, target, n_ctx, skipped, closers):
    from ppow.bench.peer_llamacpp import GGUFDraftModel, LlamaCppRunner, load_llama
    from ppow.bench.runners import System

    kind = "llama-cpp-python"
    note = ("same llama.cpp settings as ppow: swa_full, flash attention on, "
            + ("weight repacking on (--peer-repack)" if args.peer_repack else "no weight repacking"))
    plain = load_llama(target, n_ctx, args.threads, repack=args.peer_repack, n_gpu_layers=args.n_gpu_layers)
    closers.append(plain.close)
    systems = [System(f"{kind} plain", kind, LlamaCppRunner(plain, args.n_predict, args.temp, args.seed),
                      notes=[f"Llama.generate without a draft model; {note}"])]
    if not args.drafter or not args.k:
        return systems
    spec = None
    from ppow.gguf_keys import is_feature_drafter

    for name, path in args.drafter:
        if is_feature_drafter(path):  # llama-cpp-python's draft_model runs token LMs only
            for k in args.k:
                skipped.append({"system": f"{kind} {name} k={k}",
                                "reason": "llama-cpp-python has no feature-drafter (EAGLE-3) path"})
            continue
        try:
            draft = GGUFDraftModel(path, n_ctx, args.threads, plain.n_vocab(), repack=args.peer_repack,
                                   n_gpu_layers=args.n_gpu_layers_draft)
        except Exception as e:  # e.g. a drafter llama-cpp-python cannot load
            for k in args.k:
                skipped.append({"system": f"{kind} {name} k={k}", "reason": f"cannot load the drafter: {e}"})
            continue
        closers.append(draft.llm.close)
        if spec is None:  # one target with all logits on, shared by every drafter and k
            spec = load_llama(target, n_ctx, args.threads, draft_model=draft, repack=args.peer_repack,
                              n_gpu_layers=args.n_gpu_layers)
            closers.append(spec.close)
        notes = ["Llama(draft_model=...) drafting greedily with the drafter GGUF in a second Llama"]
        if draft.d2t is not None:
            notes.append("reduced draft vocabulary mapped through ppow.draft_vocab.d2t")
        for k in args.k:
            systems.append(System(f"{kind} {name} k={k}", kind,
                                  LlamaCppRunner(spec, args.n_predict, args.temp, args.seed, draft=draft, k=k),
                                  baseline=f"{kind} plain", drafter=name, policy="fixed", k=k, notes=notes))
    if args.auto:
        skipped.append({"system": f"{kind} auto", "reason": "llama-cpp-python has no adaptive window policy"})
    return systems


def prompt_lookup_systems(args, target, n_ctx, closers):
    """llama-cpp-python's prompt-lookup decoding: the free drafter every llama-cpp-python user has."""
    from ppow.bench.peer_llamacpp import LlamaCppRunner, PromptLookupDraft, load_llama
    from ppow.bench.runners import System

    kind = "llama-cpp-python"
    systems = []
    if "llama-cpp-python" not in args.peers:  # its baseline: llama-cpp-python's plain decoding
        plain = load_llama(target, n_ctx, args.threads, repack=args.peer_repack, n_gpu_layers=args.n_gpu_layers)
        closers.append(plain.close)
        systems.append(System(f"{kind} plain", kind, LlamaCppRunner(plain, args.n_predict, args.temp, args.seed),
                              notes=["Llama.generate without a draft model"]))
    draft = PromptLookupDraft()
    spec = load_llama(target, n_ctx, args.threads, draft_model=draft, repack=args.peer_repack,
                      n_gpu_layers=args.n_gpu_layers)
    closers.append(spec.close)
    notes = ["Llama(draft_model=LlamaPromptLookupDecoding) (max_ngram_size 2): drafts only where the "
             "last tokens occurred before in the prompt or output"]
    return systems + [System(f"{kind} prompt-lookup k={k}", kind,
                             LlamaCppRunner(spec, args.n_predict, args.temp, args.seed, draft=draft, k=k),
                             baseline=f"{kind} plain", drafter="prompt-lookup", policy="fixed", k=k, notes=notes)
                      for k in args.k]


def llamacpp_bin_systems(args, target, n_ctx, prompts, ids, skipped, closers):
    """llama.cpp's own runtime (llama-speculative-simple), each drafter at each fixed k. Its baseline is
    llama.cpp's one-token decoding through a ppow Generator with batch_invariant=False (the same kernels
    and no padding row: the binary itself cannot run without a drafter). A system that fails on the
    first prompt (llama.cpp's eagle3 path aborts on gemma3 targets) is skipped with the binary's reason."""
    from ppow import Generator
    from ppow.bench.peer_llamacpp_bin import NOTE, LlamaCppBinError, RetokenizedRunner, SpeculativeSimpleRunner
    from ppow.bench.runners import PpowRunner, System

    kind = "llama.cpp"
    gen = Generator(target, n_ctx=n_ctx, n_threads=args.threads, batch_invariant=False, n_gpu_layers=args.n_gpu_layers)
    closers.append(gen.close)
    retokenize = lambda text: gen.tokenize(text, add_special=False, parse_special=False)
    text_of = {tuple(i): p.text for i, p in zip(ids, prompts)}
    common = dict(n_predict=args.n_predict, temp=args.temp, seed=args.seed, ignore_eos=False)
    compared = "compared as text with its baseline over the common length (the binary prints text only)"
    systems = [System(f"{kind} plain", kind, RetokenizedRunner(PpowRunner(gen, use_drafter=False, **common),
                                                                retokenize, gen.detokenize),
                      notes=["llama.cpp's one-token decoding (a ppow Generator with batch_invariant=False: "
                             "llama_decode of one token per step, no padding row); llama-speculative-simple "
                             "cannot run without a drafter"])]
    if args.temp != 0:
        skipped.append({"system": f"{kind} (speculative)", "reason": "the peer runs greedy only (--temp 0)"})
        return systems
    probe_ids = ids[0]
    for name, path in args.drafter:
        for k in args.k:
            runner = SpeculativeSimpleRunner(args.llama_cpp_bin, target, path, k, args.n_predict,
                                             args.threads or os.cpu_count() or 1, n_ctx, text_of, retokenize,
                                             n_gpu_layers=args.n_gpu_layers, n_gpu_layers_draft=args.n_gpu_layers_draft)
            try:
                runner.run(probe_ids)
            except LlamaCppBinError as e:
                skipped.append({"system": f"{kind} {name} k={k}", "reason": str(e)})
                continue
            systems.append(System(f"{kind} {name} k={k}", kind, runner, baseline=f"{kind} plain", drafter=name,
                                  policy="fixed", k=k, compare_prefix=True,
                                  timing="the binary's decode loop (prompt and model load excluded)",
                                  notes=[f"{NOTE}; {compared}"]))
    return systems



def hf_systems(args, target, skipped):
    from ppow.bench import peer_hf
    from ppow.bench.runners import System

    ckpts = dict(args.drafter_hf)
    for name, _ in args.drafter:
        if name not in ckpts:
            skipped.append({"system": f"hf {name}", "reason": "no HF checkpoint given (--drafter-hf NAME=DIR)"})
    if not ckpts:
        return []
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)  # 0: all hardware threads, as ppow
    try:
        model = peer_hf.load_target(args.hf_target or target)
    except Exception as e:
        skipped.append({"system": "hf (all)", "reason": f"transformers cannot load the target: {e}"})
        return []
    lim = args.hf_limit
    timing = "whole generate() call, prompt processing included"
    mk = lambda assistant, k: peer_hf.HFRunner(model, args.n_predict, args.temp, args.seed, assistant, k)
    assisted = []
    for name, path in ckpts.items():
        try:
            draft = peer_hf.load_drafter(path, model)
        except Exception as e:
            skipped.append({"system": f"hf {name}", "reason": str(e)})
            continue
        for k in args.k:
            assisted.append(System(f"hf {name} k={k}", "hf", mk(draft, k), baseline="hf plain", drafter=name,
                                   policy="fixed", k=k, max_prompts=lim, timing=timing,
                                   notes=[f"num_assistant_tokens={k}, constant schedule, no confidence cut"]))
        if args.auto:
            assisted.append(System(f"hf {name} default", "hf", mk(draft, None), baseline="hf plain", drafter=name,
                                   policy="hf-default", max_prompts=lim, timing=timing,
                                   notes=["transformers' default schedule: 20 candidates cut by an adaptive "
                                          "confidence threshold"]))
    if not assisted:
        return []
    plain = System("hf plain", "hf", mk(None, None), max_prompts=lim, timing=timing,
                   notes=[f"target dequantised by transformers; first {lim} prompts only"])
    return [plain] + assisted


# -- main loop -------------------------------------------------------------------------------------
def run_all(systems, prompts, ids, repeats, seed):
    from tqdm import tqdm

    rng = random.Random(seed)
    per = [[s for s in systems if s.max_prompts is None or i < s.max_prompts] for i in range(len(prompts))]
    runs = []
    with tqdm(total=repeats * sum(map(len, per)), desc="ppow-bench", unit="run", file=sys.stderr) as bar:
        for rep in range(repeats):
            for i, p in enumerate(prompts):
                order = list(per[i])
                rng.shuffle(order)  # so machine drift within a prompt favours no system
                for pos, s in enumerate(order):
                    bar.set_postfix_str(f"{p.category}: {s.name}", refresh=False)
                    s.runner.prime(ids[i])
                    m = s.runner.run(ids[i])
                    runs.append({"system": s.name, "qid": p.qid, "category": p.category, "repeat": rep, "order": pos,
                                 "tokens": m.tokens, "n_generated": m.n_generated, "t_ms": m.t_ms,
                                 "tokens_per_second": m.tokens_per_second, "tau": m.tau, "n_steps": m.n_steps,
                                 "n_drafted": m.n_drafted, "n_accepted": m.n_accepted, "drafted_at": m.drafted_at,
                                 "accepted_at": m.accepted_at, "stop_reason": m.stop_reason, "exact": m.exact})
                    bar.update()
    return runs


def engine_exactness(systems) -> dict:
    """Each ppow system's engine: exact on this backend or not, and why (Generator.backend)."""
    out = {}
    for s in systems:
        gen = getattr(s.runner, "gen", None)
        if s.family == "ppow" and gen is not None:
            b = gen.backend
            out[s.name] = {"exact": b["exact"], "reason": b["exact_reason"], "gpu_layers": b["gpu_layers"],
                           "drafter_gpu_layers": b.get("drafter_gpu_layers")}
    return out


def warm_up(systems, ids):
    """One untimed run of every system on (a prefix of) the first prompt: first calls build compute
    graphs and fault in weights."""
    for s in systems:
        if getattr(s.runner, "needs_warm_up", True):
            s.runner.prime(ids)
            s.runner.run(ids)


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    check_args(ap, args)

    from ppow import Generator, PpowError
    from ppow.bench.analysis import add_speedups, check_outputs, head_to_head, summarize_all
    from ppow.bench.plots import write_plots
    from ppow.bench.prompts import load_prompts
    from ppow.bench.report import overall_table, write_report
    from ppow.models import resolve_target
    from ppow.templates import parse_special

    try:  # mistakes in the inputs: a message, not a traceback
        target = resolve_target(args.target)
        prompts = load_prompts(args.prompts, args.template, args.limit, args.per_category, target=target)
        special = parse_special(args.template)  # a chat template's turn markers are control tokens
        with Generator(target, n_ctx=64) as tok:  # tokenize once: every system gets the same ids
            ids = [tok.tokenize(p.text, add_special=True, parse_special=special) for p in prompts]
    except (PpowError, ValueError, OSError) as e:
        print(f"ppow-bench: error: {e}", file=sys.stderr)
        return 2
    window = max(args.k + ([args.auto_max] if args.auto else []) + [1])
    longest = max(map(len, ids))
    n_ctx = args.ctx or (longest + args.n_predict + window + 64)
    if longest + args.n_predict + window > n_ctx:
        print(f"ppow-bench: error: --ctx {n_ctx} is too small for the longest prompt ({longest} tokens) plus "
              f"{args.n_predict} tokens and a window of {window}", file=sys.stderr)
        return 2

    closers, skipped = [], []
    try:
        systems = ppow_systems(args, target, n_ctx, closers)
        if "llama-cpp-python" in args.peers:
            systems += llamacpp_systems(args, target, n_ctx, skipped, closers)
        if "prompt-lookup" in args.peers:
            systems += prompt_lookup_systems(args, target, n_ctx, closers)
        if args.llama_cpp_bin:
            systems += llamacpp_bin_systems(args, target, n_ctx, prompts, ids, skipped, closers)
        if "hf" in args.peers:
            systems += hf_systems(args, target, skipped)
        print(f"ppow-bench: {len(prompts)} prompts, {len(systems)} systems, n={args.n_predict}", file=sys.stderr)
        warm_up(systems, ids[0][:64])
        runs = run_all(systems, prompts, ids, args.repeats, args.seed)
        exactness = engine_exactness(systems)
    finally:
        for close in closers:
            close()

    descr = [s.describe() for s in systems]
    greedy = args.temp == 0
    # Every engine is checked against its own plain output. ppow verifies with batch-invariant
    # kernels (README, "The engine"), so any difference there is a failure. The peers make
    # no such promise: llama-cpp-python's one-token decodes take llama.cpp's multi-threaded split-KV
    # attention past 256 cached tokens, which rounds differently from its verify batches, and
    # transformers verifies in float32 batches; their differences are reported, not failed.
    checked = check_outputs(runs, descr) if greedy else []
    family = {s["name"]: s["family"] for s in descr}
    baseline_of = {s["name"]: s["baseline"] for s in descr}
    mismatches = [m for m in checked if family[m["system"]] == "ppow"]
    # A difference where ppow's engine said its output is not exact on this backend (a GPU today:
    # Generator.exact_reason) is reported; one where it claimed exactness is a failure.
    claimed = {(r["system"], r["qid"], r["repeat"]): r.get("exact") for r in runs}
    broken = [m for m in mismatches if claimed.get((m["system"], m["qid"], m["repeat"])) is not False]
    peer_mismatches = [m for m in checked if family[m["system"]] != "ppow"]
    compared = [family[r["system"]] for r in runs if greedy and baseline_of[r["system"]]]
    add_speedups(runs, descr)
    report = {
        "machine": machine_info(),
        "settings": {"prompts": os.path.abspath(args.prompts), "target": target, "drafters": dict(args.drafter),
                     "references": dict(args.reference),
                     "drafters_hf": dict(args.drafter_hf), "n_prompts": len(prompts),
                     "categories": sorted({p.category for p in prompts}), "template": args.template,
                     "n_predict": args.n_predict, "temp": args.temp, "greedy": greedy, "seed": args.seed,
                     "k": args.k, "auto": args.auto, "auto_max": args.auto_max, "lookup": args.lookup,
                     "repeats": args.repeats,
                     "threads": args.threads, "n_gpu_layers": args.n_gpu_layers,
                     "n_gpu_layers_draft": args.n_gpu_layers_draft, "n_ctx": n_ctx, "peers": args.peers, "peer_repack": args.peer_repack,
                     "llama_cpp_bin": args.llama_cpp_bin,
                     "hf_limit": args.hf_limit, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                     "argv": sys.argv[1:] if argv is None else list(argv)},
        "systems": descr,
        "skipped": skipped,
        "results": summarize_all(runs, descr),
        "head_to_head": head_to_head(runs, descr),
        "n_checked": compared.count("ppow"),
        "n_checked_peers": len(compared) - compared.count("ppow"),
        "mismatches": mismatches,
        "peer_mismatches": peer_mismatches,
        "ok": not broken,
        "exactness": exactness,
        "runs": [{k: v for k, v in r.items() if k != "tokens"} for r in runs],
    }
    os.makedirs(args.outdir, exist_ok=True)
    report["plots"] = write_plots(args.outdir, report)
    jpath, mpath = write_report(args.outdir, report)
    print("\n".join(overall_table(report)))
    print(f"ppow-bench: wrote {mpath}, {jpath} and {len(report['plots'])} plots", file=sys.stderr)
    if len(broken) < len(mismatches):
        print(f"ppow-bench: {len(mismatches) - len(broken)} speculative run(s) differ from plain output where the "
              f"engine said its output is not exact on this backend (report.json: exactness)", file=sys.stderr)
    if broken:
        print(f"ppow-bench: FAILED: {len(broken)} speculative run(s) differ from plain output (see {mpath})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
