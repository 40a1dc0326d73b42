"""ppow-run: generate text with a GGUF target and (optionally) a GGUF drafter, llama.cpp-style flags.

With no model flags it runs the default: Gemma 3 270M (assembled from its PyPI package) with the
PPOW drafter shipped in ppow. Text streams to stdout, a one-line summary goes to stderr; --json
prints one JSON object instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading

DEFAULT_PROMPT = "Question: What are three simple ways to save energy at home?\nAnswer:"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ppow-run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", help="target GGUF or name: gemma3-270m (Gemma 3 270M Q4_K_M, the default), "
                                          "smollm2-135m (SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("-md", "--model-draft", help="drafter GGUF, or the kind of a drafter shipped for a named target "
                                                 "(kd, ppow); default with a named target: its shipped PPOW drafter; "
                                                 "'none' for plain decoding")
    ap.add_argument("-p", "--prompt")
    ap.add_argument("-f", "--file", help="read the prompt from a file")
    ap.add_argument("--chat", action="store_true",
                    help="send the prompt as one user turn in the target's own chat template (instruct models)")
    ap.add_argument("-n", "--n-predict", type=int, default=128)
    ap.add_argument("-c", "--ctx-size", type=int, default=4096)
    ap.add_argument("-b", "--batch-size", type=int, default=512)
    ap.add_argument("-t", "--threads", type=int, default=0, help="0: all hardware threads")
    ap.add_argument("--no-batch-invariant", action="store_true",
                    help="decode single target tokens with llama.cpp's own one-row kernels (faster plain steps "
                         "at depth on several CPU threads, and on a GPU no padding to 4 rows, but verify batches "
                         "may then round differently: not exact)")
    ap.add_argument("-fa", "--flash-attn", choices=("auto", "on", "off"), default="auto",
                    help="the target's flash attention (as llama.cpp's -fa); off: faster deep contexts on a CPU "
                         "for many-head targets, every plain step then padded to stay exact")
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                    help="target layers on the GPU (-1: all; default 0). Greedy output is exact by construction on "
                         "the CPU and, with every decode padded to 4 rows (the GPU default), on CUDA; the summary "
                         "says which (docs/gpu.md)")
    ap.add_argument("-ngld", "--n-gpu-layers-draft", type=int, default=None,
                    help="drafter layers on the GPU (default: as -ngl; the drafter never changes the output)")
    ap.add_argument("--temp", type=float, default=0.0, help="0: greedy")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draft-max", type=int, default=8)
    ap.add_argument("--draft-min", type=int, default=0)
    ap.add_argument("--draft-p-min", type=float, default=0.0)
    ap.add_argument("--draft-policy", choices=("fixed", "auto"), default="auto")
    ap.add_argument("--lookup", action=argparse.BooleanOptionalAction, default=True,
                    help="also draft from the text itself where it repeats (prompt lookup; with auto, only where "
                         "it is expected to pay); works without a drafter too (default on)")
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ap.add_argument("--ignore-eos", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="also print where the models run (GPU layers, padding, verify batch size) and why the "
                         "output is or is not exact, before generating")
    ap.add_argument("--info", action="store_true", help="print the llama.cpp build ppow links and exit")
    return ap


def read_prompt(args) -> str:
    if args.prompt is not None:
        return args.prompt
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            return f.read()
    if not sys.stdin.isatty():
        text = sys.stdin.read()
        if text.strip():
            return text
    return DEFAULT_PROMPT


def resolve_models(model, model_draft):
    """(target path, drafter path or None) from -m and -md. -m takes a target name (ppow.models.TARGETS)
    or a GGUF path; with a name (or no -m), -md takes a shipped drafter kind ("kd", "ppow") and its
    absence means the target's shipped PPOW drafter (plain decoding, said on stderr, if none ships)."""
    import ppow
    from ppow.models import DEFAULT_TARGET, TARGETS, shipped_drafters

    name = DEFAULT_TARGET if model is None else (model if model in TARGETS else None)
    target = ppow.default_target(name) if name else model
    if model_draft in ("none", ""):
        return target, None
    if model_draft is None:
        if name is None:
            return target, None
        if f"{name}-ppow" in shipped_drafters(name):
            return target, ppow.default_drafter("ppow", name)
        print(f"ppow-run: no shipped drafter for {name}; decoding plainly", file=sys.stderr)
        return target, None
    if name and not os.path.isfile(model_draft) and "/" not in model_draft and not model_draft.endswith(".gguf"):
        return target, ppow.default_drafter(model_draft, name)  # a shipped drafter's kind
    return target, model_draft


def describe_backend(b: dict) -> str:
    """One line: where the target and drafter run, the decode shapes, and the exactness verdict."""
    where = f"target {b['gpu_layers']}/{b['n_layer'] + 1} layers on {b['gpu_devices']}" if b["gpu_layers"] else "target on the CPU"
    if "drafter_gpu_layers" in b:
        where += f", drafter {b['drafter_gpu_layers']} layers on the GPU" if b["drafter_gpu_layers"] else ", drafter on the CPU"
    pad = f"pad_rows {b['pad_rows']}" if b["pad_rows"] else ("one-token decodes padded" if b["pads_single"] else
                                                         "per-row attention switch" if b.get("ref_attention") else "no padding")
    return (f"backend: {where} (asked -ngl {b['n_gpu_layers']}); {b['n_threads']} threads, flash attention "
            f"{b['flash_attn']}, {pad}, verify batches <= {b['verify_batch_max']} rows; "
            f"exact: {'yes' if b['exact'] else 'not established'}: {b['exact_reason']}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import ppow
    from ppow import Generator, PpowError

    if args.info:
        print(json.dumps(ppow.build_info(), indent=2))
        return 0
    try:
        prompt = read_prompt(args)
        target, drafter = resolve_models(args.model, args.model_draft)
        gen = Generator(target, drafter, n_ctx=args.ctx_size, n_batch=args.batch_size, n_threads=args.threads,
                        n_gpu_layers=args.n_gpu_layers, n_gpu_layers_draft=args.n_gpu_layers_draft,
                        batch_invariant=not args.no_batch_invariant, flash_attn=args.flash_attn)
        params = dict(n_predict=args.n_predict, temp=args.temp, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                      draft_max=args.draft_max, draft_min=args.draft_min, draft_p_min=args.draft_p_min,
                      draft_policy=args.draft_policy, lookup=args.lookup, stop=args.stop, ignore_eos=args.ignore_eos)
        gen._params(params)  # reject bad values before starting the worker
        if args.chat:  # the turn markers are control tokens: tokenize them as such
            from ppow.templates import apply_template

            prompt = gen.tokenize(apply_template("chat", prompt, target), parse_special=True)
    except (PpowError, ValueError, OSError) as e:
        print(f"ppow-run: error: {e}", file=sys.stderr)
        return 2
    if args.verbose:
        print(f"ppow-run: {describe_backend(gen.backend)}", file=sys.stderr)

    # Generate on a worker thread so Ctrl-C reaches the main thread, which then cancels cleanly.
    box: dict = {}
    pieces: list[str] = []

    def work():
        try:
            if args.json:
                box["result"] = gen.generate(prompt, **params)
            else:
                for piece in gen.stream(prompt, **params):
                    pieces.append(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                box["stats"] = gen.last_stats
        except BaseException as e:
            box["error"] = e

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    interrupted = False
    while worker.is_alive():
        try:
            worker.join(0.1)
        except KeyboardInterrupt:
            interrupted = True
            gen.cancel()
    if "error" in box:
        print(f"\nppow-run: error: {box['error']}", file=sys.stderr)
        return 1
    if args.json:
        res = box["result"]
        s = res.stats
        out = {"text": res.text, "tokens": res.tokens, "n_steps": s.n_steps, "n_drafted": s.n_drafted,
               "n_accepted": s.n_accepted, "tau": s.tau, "tokens_per_second": s.tokens_per_second,
               "t_draft_ms": s.t_draft_ms, "t_verify_ms": s.t_verify_ms, "prompt_tokens": s.prompt_tokens,
               "stats": s.as_dict(), "target": gen.target_path, "drafter": gen.drafter_path,
               "exact": s.exact, "exact_reason": s.exact_reason, "backend": gen.backend}
        print(json.dumps(out))
    else:
        s = box.get("stats") or gen.last_stats
        sys.stdout.write("\n")
        print(f"ppow-run: {s.n_generated} tokens, {s.tokens_per_second:.1f} tok/s, tau {s.tau:.2f}, "
              f"drafted {s.n_drafted} accepted {s.n_accepted} ({s.acceptance_rate:.0%}), steps {s.n_steps} "
              f"(plain {s.n_plain_steps}, lookup {s.n_lookup_steps}), prompt {s.prompt_tokens} tok, "
              f"stop: {s.stop_reason}, exact: {'yes' if s.exact else 'NOT ESTABLISHED'}", file=sys.stderr)
        if not s.exact or args.verbose:
            print(f"ppow-run: exactness: {s.exact_reason}", file=sys.stderr)
    gen.close()
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
