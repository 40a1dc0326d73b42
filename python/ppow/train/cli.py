"""ppow-train: data | kd | ppow | eval.

  ppow-train data --target T.gguf --prompts train-prompts.jsonl --limit 2000 --max-new 64 -o runs/cache
  ppow-train data --target T.gguf --seed-prefixes 500 -o runs/cache-seed
  ppow-train kd   --cache runs/cache --target T.gguf --draft-vocab 32768 --init-embed target -o runs/kd
  ppow-train kd   --cache runs/cache --target T.gguf --drafter-kind feature --ttt-steps 3 -o runs/eagle3
  ppow-train ppow --cache runs/cache --init runs/kd -o runs/ppow
  ppow-train eval --drafter runs/ppow --target T.gguf --prompts specbench-dev.jsonl --k 4,6,8 -o eval.json
Multi-GPU: torchrun --nproc_per_node N -m ppow.train.cli kd ... (same flags).
"""

import argparse
import json
import os
import sys
import time

from ppow.templates import TEMPLATES, parse_special


def _target_path(p):
    """A target name (ppow.models.TARGETS; none: the default, Gemma 3 270M) or a path."""
    from ppow.models import resolve_target

    return resolve_target(p or None)


def add_common_train(ap):
    ap.add_argument("--cache", required=True, action="append",
                    help="cache dir from `ppow-train data`; repeat to train on several (same target, layers, top-k)")
    ap.add_argument("--allow-incomplete-cache", action="store_true",
                    help="train on the shards an unfinished (or still running) `ppow-train data` has written")
    ap.add_argument("-o", "--out", required=True, help="run dir (OUT/ckpt resumable, OUT/final the result)")
    ap.add_argument("--target", help="target GGUF/HF dir: checked against the cache's target identity")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--ctx-len", type=int, default=None, help="drafter context in tokens (0 = whole sequence)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/ckpt if it exists")
    ap.add_argument("--stop-after", type=int, default=0, help="stop (checkpointed) after this many steps this run")
    ap.add_argument("--cpu-budget", type=float, default=0,
                    help="finish (OUT/final) once training steps have used this many CPU-seconds (all threads "
                         "of this process): equal-compute comparisons; pair with --schedule constant")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: autocast forward passes to bfloat16 (weights, optimizer and losses' "
                         "reductions stay fp32); about 2x faster on CPUs with AMX or AVX512-BF16")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--eval-cache", default=None,
                    help="held-out cache (same target; never trained on): greedy-chain tau on it at step 0, every "
                         "--eval-every steps and at the end, logged to OUT/metrics.jsonl (stage 'heldout')")
    ap.add_argument("--eval-every", type=int, default=0, help="steps between held-out evaluations (0 = only at the end)")
    ap.add_argument("--eval-k", type=int, default=4, help="window length of the held-out tau")
    ap.add_argument("--eval-limit", type=int, default=0, help="evaluate on the first N held-out sequences (0 = all)")
    ap.add_argument("--early-stop", type=int, default=0, metavar="P",
                    help="stop once P held-out evaluations in a row gained less than --early-stop-eps; OUT/final "
                         "is then the best evaluated drafter (OUT/best)")
    ap.add_argument("--early-stop-eps", type=float, default=0.005, help="held-out tau gain that counts (default 0.005)")


def build_parser():
    ap = argparse.ArgumentParser(prog="ppow-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    from .prompts import add_parser as add_prompts_parser

    add_prompts_parser(sub)

    d = sub.add_parser("data", help="continue prompts greedily with the target and cache its tokens + top-k")
    d.add_argument("--target", default=None, help="GGUF file or HF dir (default: the packaged Gemma 3 270M)")
    d.add_argument("--backend", choices=["auto", "engine", "llama", "torch"], default="auto",
                   help="engine (default for GGUF): ppow's batched C++ data engine with hidden states; "
                        "llama: one sequence at a time through llama-cpp-python; torch: transformers (HF dirs)")
    d.add_argument("--layers", default="auto",
                   help="engine: target hidden_states[k] to store, e.g. 2,9,15 (auto: EAGLE-3's low/middle/high "
                        "layers from the target's depth; 'none': no features)")
    d.add_argument("--n-parallel", type=int, default=32, help="engine: sequences in flight in one decode")
    d.add_argument("--host-threads", type=int, default=0,
                   help="engine: threads for the per-row softmax/top-k (0 = all cores; the ceiling on a GPU)")
    d.add_argument("--topk-on", choices=["auto", "host", "device"], default="auto",
                   help="engine: where each row's softmax/top-k runs: device = in the decode graph on the target's "
                        "backend, only k values per row reach the host (greedy data only); host = host threads; "
                        "auto = device when the target has layers on a GPU and --temp is 0")
    d.add_argument("--temp", type=float, default=0.0, help="engine: 0 = greedy; > 0 samples (seeded by --seed)")
    d.add_argument("--prompts", default=None, help="jsonl (text|turns) or plain text, one prompt per line")
    d.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0 = all cores; 1 on a busy machine)")
    d.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                   help="engine and llama backends: target layers on the GPU (-1 = all; default 0: CPU only)")
    d.add_argument("--template", choices=sorted(TEMPLATES), default="raw",
                   help="prompt template (ppow.templates); chat: the target GGUF's own chat template")
    d.add_argument("--limit", type=int, default=None)
    d.add_argument("--offset", type=int, default=0)
    d.add_argument("--seed-prefixes", type=int, default=0, help="with no --prompts: number of seed-prefix sequences")
    d.add_argument("--seed-sample-tokens", type=int, default=3)
    d.add_argument("--max-new", type=int, default=64)
    d.add_argument("--prompt-tail", type=int, default=64, help="keep BOS + the last N prompt tokens")
    d.add_argument("--topk", type=int, default=16)
    d.add_argument("--shard-size", type=int, default=None, help="sequences per shard (default 64 engine, 256 else)")
    d.add_argument("--n-ctx", type=int, default=0, help="llama.cpp context (default prompt-tail + max-new + 8)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("-o", "--out", required=True)
    d.add_argument("--quiet", action="store_true")

    k = sub.add_parser("kd", help="stage 1: token-level distillation (the baseline)")
    add_common_train(k)
    k.add_argument("--init", default=None, help="continue from a drafter checkpoint (fresh optimizer), or start "
                   "from a Hugging Face EAGLE-3 checkpoint dir (a public drafter for this target; needs --target)")
    k.add_argument("--drafter-kind", choices=["standalone", "feature"], default=None,
                   help="standalone: a small Llama over tokens (default); feature: EAGLE-3 on the target's hidden "
                        "states (llama.cpp eagle3; needs a cache with 3 feature layers and --target)")
    k.add_argument("--hidden", type=int, default=None, help="width (standalone default 256; feature: the target's)")
    k.add_argument("--layers", type=int, default=1)
    k.add_argument("--heads", type=int, default=4)
    k.add_argument("--kv-heads", type=int, default=0)
    k.add_argument("--head-dim", type=int, default=0, help="0 = hidden / heads")
    k.add_argument("--intermediate", type=int, default=0, help="MLP width (default 3 x hidden)")
    k.add_argument("--max-positions", type=int, default=8192)
    k.add_argument("--rope-theta", type=float, default=None, help="standalone default 1e4; feature: the target's")
    k.add_argument("--tie-embeddings", action="store_true")
    k.add_argument("--draft-vocab", type=int, default=None,
                   help="reduced draft vocabulary size (0 = the target's; default 0 standalone, 16384 feature); with "
                        "--init (feature): the drafter's head moves to this cache's N most frequent tokens")
    k.add_argument("--init-embed", choices=["target", "random"], default="random")
    k.add_argument("--batch-size", type=int, default=16)
    k.add_argument("--chunk-len", type=int, default=128)
    k.add_argument("--ce-coef", type=float, default=1.0)
    k.add_argument("--kl-coef", type=float, default=1.0)
    k.add_argument("--kd-positions", choices=["all", "continuation"], default=None,
                   help="labels from all rows or the target's generated (scored) rows only "
                        "(default: all standalone, continuation feature)")
    k.add_argument("--ttt-steps", type=int, default=3, help="feature: steps unrolled on the drafter's own states")
    k.add_argument("--ttt-decay", type=float, default=0.8, help="feature: weight of step i's loss is decay**i")
    k.add_argument("--norm-before-residual", action="store_true", help="feature: residual from the normed state")
    k.add_argument("--norm-before-fc", action="store_true", help="feature: RMSNorm the target features before fc")

    p = sub.add_parser("ppow", help="stage 2: PPOW window-level policy optimisation")
    add_common_train(p)
    p.add_argument("--init", required=True, help="the stage-1 (KD) drafter (and the --anchor reference one)")
    p.add_argument("--estimator", choices=["expected", "sampled"], default="expected",
                   help="expected: the window rewards' exact expectation under the drafter's sampling, for every "
                        "window start of --chunks chunks from one teacher-forced pass (python/ppow/train/"
                        "expected.py); sampled: groups of sampled windows, GRPO advantages, PPO clip (the paper's form)")
    p.add_argument("--anchor", choices=["target", "reference"], default="target",
                   help="target: --kl-coef x KL(target's cached top-k || drafter) on the windows' positions; "
                        "reference: --kl-coef x KL(drafter || the frozen --init drafter)")
    p.add_argument("--chunks", type=int, default=0,
                   help="expected: chunks per step, every window start in them (0: about 1,024 window starts; "
                        "8 chunks of 128 for a feature drafter)")
    p.add_argument("--chunk-len", type=int, default=128,
                   help="expected: chunk length (feature: the whole sequence when it fits; standalone: at most "
                        "--ctx-len + the window, so no window sees more than --ctx-len tokens of context)")
    p.add_argument("--prox-grad", choices=["full", "score"], default="full",
                   help="expected: full = the exact gradient of E[proximity reward]; score = its score-function "
                        "part only (the reward held fixed, as the sampled estimator treats it)")
    p.add_argument("--windows", type=int, default=16, help="sampled: windows per step (after selection)")
    p.add_argument("--group-size", type=int, default=8, help="sampled: sampled windows per start position (G)")
    p.add_argument("--k", type=int, default=6, help="fixed window length (without adaptive windowing)")
    p.add_argument("--k-min", type=int, default=2)
    p.add_argument("--k-max", type=int, default=8)
    p.add_argument("--no-adaptive-window", dest="adaptive_window", action="store_false")
    p.add_argument("--adaptive-k", choices=["speedup", "expected", "off"], default="speedup")
    p.add_argument("--window-keep", type=float, default=0.25, help="fraction of candidate windows kept")
    p.add_argument("--score-positions", type=int, default=2, help="window positions in the windowing score")
    p.add_argument("--no-speedup-reward", dest="speedup_reward", action="store_false")
    p.add_argument("--no-proximity", dest="proximity", action="store_false")
    p.add_argument("--speedup-coef", type=float, default=1.0)
    p.add_argument("--proximity-coef", type=float, default=0.5)
    p.add_argument("--adv-norm", choices=["std", "none"], default="std",
                   help="std: group-normalised advantages (sampled); each window's expected reward divided by its "
                        "reward's standard deviation under the drafter's sampling, GRPO's infinite-group limit (expected)")
    p.add_argument("--pg-positions", choices=["decisive", "window"], default="decisive")
    p.add_argument("--clip", type=float, default=0.2, help="PPO ratio clip (0 = off)")
    p.add_argument("--kl-coef", type=float, default=0.02, help="the anchor's coefficient (--anchor)")
    p.add_argument("--kd-coef", type=float, default=0.0, help="optional teacher-forced CE on the target's tokens")
    p.add_argument("--ppo-epochs", type=int, default=2, help="sampled: PPO passes over each batch of rollouts")
    p.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    p.add_argument("--exact-target", action="store_true",
                   help="run the target (--target) on every drafted window instead of using the cache")
    p.add_argument("--verify", choices=["greedy", "sampled"], default="greedy",
                   help="greedy: accept while equal to the target's argmax; sampled: min(1, p/q) (needs --exact-target)")
    p.add_argument("--backend", choices=["auto", "llama", "torch"], default="auto")
    p.add_argument("--all-positions", action="store_true", help="windows may start inside prompts too")
    p.add_argument("--cost-profile", default=None, help='JSON {"target_ms": {"1": .., "2": ..}, "draft_ms": ..}')
    p.add_argument("--target-ms-1", type=float, default=1.0)
    p.add_argument("--target-ms-per-token", type=float, default=0.1)
    p.add_argument("--draft-ms", type=float, default=0.05)

    e = sub.add_parser("eval", help="simulate greedy speculative decoding; report tau per k and category")
    e.add_argument("--drafter", required=True)
    e.add_argument("--cache", default=None, help="evaluate on a cached trajectory")
    e.add_argument("--prompts", default=None, help="or: fresh target continuations of these prompts")
    e.add_argument("--target", default=None, help="for --prompts; a feature drafter's embeddings (default: the "
                                                  "target recorded at training)")
    e.add_argument("--backend", choices=["auto", "llama", "torch"], default="auto")
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--template", choices=sorted(TEMPLATES), default="raw",
                   help="prompt template (ppow.templates); chat: the target GGUF's own chat template")
    e.add_argument("--max-new", type=int, default=128)
    e.add_argument("--prompt-tail", type=int, default=0, help="0 = whole prompt (as much as fits n_ctx)")
    e.add_argument("--n-ctx", type=int, default=0)
    e.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                   help="with --prompts: target layers on the GPU for the fresh continuations (-1 = all; default 0); "
                        "the drafter is evaluated in PyTorch")
    e.add_argument("--work-dir", default=None, help="where fresh continuations are cached (reused if present)")
    e.add_argument("--k", default="2,4,6,8")
    e.add_argument("--ctx-len", type=int, default=None, help="drafter context (default: the training one)")
    e.add_argument("--cost-profile", default=None)
    e.add_argument("--target-ms-1", type=float, default=1.0)
    e.add_argument("--target-ms-per-token", type=float, default=0.1)
    e.add_argument("--draft-ms", type=float, default=0.05)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("-o", "--out", default=None, help="JSON output (also printed)")
    e.add_argument("--quiet", action="store_true")
    return ap


STAGE_DEFAULTS = {"kd": dict(lr=2e-3, warmup=50), "ppow": dict(lr=2e-4, warmup=10, ctx_len=None)}


def _fill_defaults(args):
    for k, v in STAGE_DEFAULTS.get(args.cmd, {}).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)


def _args_dict(args):
    return {k: v for k, v in vars(args).items() if k != "cmd"}


def cmd_data(args):
    from ppow.prompt_files import read_prompts

    path = _target_path(args.target)
    engine = args.backend == "engine" or (args.backend == "auto" and os.path.isfile(path) and path.endswith(".gguf")
                                          and not args.seed_prefixes)
    if engine:
        from .datagen import build_engine_cache

        if not args.prompts:
            raise SystemExit("ppow-train data: the engine backend needs --prompts")
        prompts = read_prompts(args.prompts, args.limit, args.offset, args.template, target=path)
        summary = build_engine_cache(
            path, args.out, prompts, template=args.template, max_new=args.max_new, prompt_tail=args.prompt_tail,
            topk=args.topk, layers=[] if args.layers == "none" else args.layers, n_parallel=args.n_parallel,
            threads=args.threads, temp=args.temp, seed=args.seed, shard_size=args.shard_size or 64,
            progress=not args.quiet, n_gpu_layers=args.n_gpu_layers, host_threads=args.host_threads,
            topk_on=args.topk_on)
        print(json.dumps(summary))
        return
    from .cache import build_cache  # the llama/torch backends: torch from here on
    from .data import load_target

    if args.shard_size is None:
        args.shard_size = 256
    if not args.prompt_tail:  # 0 = whole prompt, as much as fits the context
        args.prompt_tail = (args.n_ctx or 2048) - args.max_new - 8
    n_ctx = args.n_ctx or (args.prompt_tail + args.max_new + 8 + (8 if args.seed_prefixes else 0))
    t0 = time.time()
    target = load_target(path, args.backend, n_ctx=n_ctx, n_threads=args.threads or None, n_gpu_layers=args.n_gpu_layers)
    target.parse_special = parse_special(args.template)
    prompts = read_prompts(args.prompts, args.limit, args.offset, args.template, target=path) if args.prompts else None
    meta = build_cache(target, args.out, prompts, max_new=args.max_new, prompt_tail=args.prompt_tail,
                       topk=args.topk, shard_size=args.shard_size, seed_prefixes=args.seed_prefixes,
                       seed_sample_tokens=args.seed_sample_tokens, seed=args.seed, target_path=os.path.abspath(path),
                       progress=not args.quiet)
    pos = sum(s["positions"] for s in meta["shards"])
    print(json.dumps({"cache": args.out, "sequences": sum(s["sequences"] for s in meta["shards"]), "positions": pos,
                      "new_tokens": meta["new_tokens_this_run"], "seconds": round(time.time() - t0, 1),
                      "target_sha256": meta["target"]["sha256"]}))


def _load_cache(args, expect=None):
    from .cache import Cache
    from .data import sha256_of

    if expect is None and getattr(args, "target", None):
        expect = sha256_of(_target_path(args.target))
    return Cache(args.cache, expect_target_sha256=expect,
                 allow_incomplete=getattr(args, "allow_incomplete_cache", False))


# kd defaults per drafter kind; a feature drafter attends to every entry of its sequence at runtime
# (ctx_len 0), its training chunks are --chunk-len long
KIND_DEFAULTS = {"standalone": dict(hidden=256, rope_theta=10000.0, draft_vocab=0, kd_positions="all", ctx_len=128),
                 "feature": dict(hidden=None, rope_theta=None, draft_vocab=16384, kd_positions="continuation",
                                 ctx_len=0)}


def _feature_target(args, cache, recorded=None):
    """The target GGUF path of a feature drafter: --target, else the cache's (or the checkpoint's)
    recorded one, checked against the cache's target identity."""
    from .data import sha256_of

    path = _target_path(args.target) if args.target else (cache.meta["target"].get("path") or recorded)
    if not path or not os.path.isfile(path):
        raise ValueError(f"a feature drafter borrows the target's token embeddings: pass --target (recorded: {path})")
    if not args.target and sha256_of(path) != cache.meta["target"]["sha256"]:
        raise ValueError(f"{path} is not the cache's target any more (sha256 differs): pass --target")
    return os.path.abspath(path)


def _heldout_eval(args, train_cache, vocab, rank):
    """eval_fn(model) -> held-out metrics for loop.run, or None without --eval-cache. The held-out cache
    must come from the training cache's target and share no sequence with it (checked by token ids)."""
    if args.early_stop and not (args.eval_cache and args.eval_every > 0):
        raise ValueError("--early-stop needs a held-out curve: --eval-cache DIR and --eval-every N")
    if args.early_stop < 0 or args.eval_every < 0 or args.eval_k < 1:
        raise ValueError("--early-stop and --eval-every must be >= 0, --eval-k >= 1")
    if not args.eval_cache or rank != 0:
        return None
    from .cache import Cache
    from .evaluate import simulate, summarize

    held = Cache(args.eval_cache, expect_target_sha256=train_cache.meta["target"]["sha256"])
    if held.layers != train_cache.layers:
        raise ValueError(f"--eval-cache {args.eval_cache} holds other feature layers than the training cache")
    n = len(held.seq_len) if args.eval_limit <= 0 else min(args.eval_limit, len(held.seq_len))
    overlap = _shared_sequences(train_cache, held, range(n))
    if overlap:
        raise ValueError(f"--eval-cache shares {overlap} of its first {n} sequences with the training cache: "
                         "it is not held out")
    seqs, k = list(range(n)), args.eval_k

    def eval_fn(model):
        res = summarize(simulate(model, vocab, held, k, ctx_len=args.ctx_len or 0, seqs=seqs), held, k)
        return {f"tau_k{k}": round(res["tau"], 4), "accept_by_position": [round(x or 0.0, 4) for x in res["accept_rate_by_position"]],
                "sequences": n}
    return eval_fn


def _shared_sequences(a, b, b_seqs):
    """How many of b's sequences b_seqs occur in cache a too (same token ids from start to end)."""
    import hashlib

    def key(c, s):
        st = int(c.seq_start[s])
        return hashlib.sha1(c.tokens[st:st + int(c.seq_len[s])].numpy().tobytes()).digest()
    seen = {key(a, s) for s in range(len(a.seq_len))}
    return sum(key(b, s) in seen for s in b_seqs)


def _resumed_vocab(args, target_vocab_size):
    """The draft vocabulary of the checkpoint `--resume` will continue, or None. A vocabulary is built
    from the cache's token counts, and a cache still being written (--allow-incomplete-cache) counts
    differently by the time a run resumes: the saved one is the one its weights were trained on."""
    from .loop import resume_source
    from .vocab import load_draft_vocab

    src = resume_source(args.out) if args.resume else None
    return None if src is None else load_draft_vocab(src, target_vocab_size)


def cmd_kd(args, rank, world, device):
    from . import checkpoint as C
    from . import drafters, kd, loop
    from .feature_model import read_target
    from .model import num_params

    cache = _load_cache(args)
    tsha = cache.meta["target"]["sha256"]
    init = loop.resolve_ckpt(args.init) if args.init else None
    if init:
        kind = C.drafter_kind(init)
        if args.drafter_kind not in (None, kind):
            raise ValueError(f"--init is a {kind} drafter, not --drafter-kind {args.drafter_kind}")
        args.drafter_kind = kind
    args.drafter_kind = args.drafter_kind or "standalone"
    vocab_asked = args.draft_vocab is not None  # with --init: move the drafter to a vocabulary of this data
    for k, v in KIND_DEFAULTS[args.drafter_kind].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    kind = drafters.get(args.drafter_kind)
    if kind.name == "feature":
        tpath = _feature_target(args, cache)
    else:
        tpath = os.path.abspath(_target_path(args.target)) if args.target else None
    resumed = _resumed_vocab(args, int(cache.meta["target"]["vocab_size"]))
    if init:
        target = read_target(tpath) if kind.name == "feature" else None
        model, vocab, info0 = C.load_drafter(init, cache.meta["target"]["vocab_size"], target=target)
        if info0.get("target_sha256") not in (None, tsha):
            raise ValueError(f"--init drafter was trained for another target ({info0.get('target_sha256')[:16]}...)")
        extra = {}
        # the vocabulary to train on: a resumed run's saved one, else --draft-vocab's from this cache, else the init's
        want = resumed
        if want is None and vocab_asked:
            want = kd.build_vocab(cache, args.draft_vocab)
        from .vocab import same_vocab

        if want is not None and not same_vocab(vocab, want):
            if kind.name != "feature":
                raise ValueError("--draft-vocab with --init moves a feature drafter's head to another vocabulary; "
                                 "a standalone drafter's embeddings are draft-vocabulary rows too: train it afresh")
            from .feature_model import remap_head

            kept = remap_head(model, getattr(vocab, "d2t", None), getattr(want, "d2t", None), target)
            extra = dict(vocab_remap=dict(old=vocab.size, new=want.size, kept_rows=kept))
            vocab = want
    else:
        vocab = resumed if resumed is not None else kd.build_vocab(cache, args.draft_vocab)
        model, extra = kind.build(cache, vocab, args, tpath)
    drafters.check_cache(model, cache)
    model.to(device)
    info = dict(stage="kd", drafter_kind=kind.name, target_sha256=tsha,
                target_vocab_size=cache.meta["target"]["vocab_size"], target_path=tpath, ctx_len=args.ctx_len, args=_args_dict(args), params=num_params(model), **extra)
    if rank == 0 and not args.quiet:
        print(f"[kd] {kind.name} drafter {num_params(model) / 1e6:.2f}M params, vocab {vocab.size}, "
              f"cache {len(cache)} positions")
    if args.chunk_len > args.ctx_len > 0:
        args.chunk_len = args.ctx_len  # a chunk is the drafter's context window
    t0 = time.time()
    final = loop.run(args, model, vocab, info, drafters.kd_step_fn(cache, vocab, args, rank), "kd", rank, world, device,
                     eval_fn=_heldout_eval(args, cache, vocab, rank))
    if rank == 0:
        print(json.dumps({"stage": "kd", "checkpoint": final, "seconds": round(time.time() - t0, 1)}))
    return final


def cmd_ppow(args, rank, world, device):
    from . import checkpoint as C
    from . import loop, ppow

    cache = _load_cache(args)
    tsha = cache.meta["target"]["sha256"]
    init = loop.resolve_ckpt(args.init)
    target = None
    if C.drafter_kind(init) == "feature":  # read the borrowed embeddings once, for the drafter and its reference
        from .feature_model import read_target

        target = read_target(_feature_target(args, cache, C.read_info(init).get("target_path")))
    model, vocab, info0 = C.load_drafter(init, cache.meta["target"]["vocab_size"], target=target)
    if info0.get("target_sha256") not in (None, tsha):
        raise ValueError("--init drafter was trained for another target than this cache's")
    from .drafters import check_cache

    check_cache(model, cache)
    ref = None
    if args.anchor == "reference" and args.kl_coef > 0:  # the frozen start, only where the loss reads it
        ref, _, _ = C.load_drafter(init, cache.meta["target"]["vocab_size"], target=target)
        ref.to(device).eval()
        for p_ in ref.parameters():
            p_.requires_grad_(False)
    model.to(device)
    if args.ctx_len is None:  # the training context; a feature drafter's 0 means every entry, as at runtime
        args.ctx_len = info0.get("ctx_len", 0) if model.kind == "feature" else (info0.get("ctx_len") or 128)
    info = dict(stage="ppow", drafter_kind=model.kind, target_path=info0.get("target_path"), target_sha256=tsha,
                target_vocab_size=cache.meta["target"]["vocab_size"],
                ctx_len=args.ctx_len, init=os.path.abspath(init), cost=ppow.cost_from_args(args).to_dict(),
                args=_args_dict(args))
    t0 = time.time()
    target = None
    if args.exact_target:
        from .data import load_target

        target = load_target(_target_path(args.target), args.backend, n_ctx=4096)
    final = loop.run(args, model, vocab, info, ppow.make_step_fn(model, ref, cache, vocab, args, rank, target),
                     "ppow", rank, world, device, eval_fn=_heldout_eval(args, cache, vocab, rank))
    if rank == 0:
        print(json.dumps({"stage": "ppow", "checkpoint": final, "seconds": round(time.time() - t0, 1)}))
    return final


def cmd_eval(args):
    from . import checkpoint as C
    from . import loop
    from .cache import Cache, build_cache
    from .data import load_target, read_prompts, sha256_of
    from .drafters import check_cache
    from .evaluate import evaluate
    from .rewards import CostModel

    ckpt = loop.resolve_ckpt(args.drafter)
    feature = C.drafter_kind(ckpt) == "feature"
    info = C.read_info(ckpt)
    # a feature drafter borrows its target's embeddings; by default the target it was trained with
    tpath = _target_path(args.target) if args.target else (info.get("target_path") if feature else None)
    model, vocab, info = C.load_drafter(ckpt, target=tpath if feature else None)
    expect = None
    if args.cache:
        cache_dir = args.cache
        if args.target:
            expect = sha256_of(tpath)
    else:
        if not args.prompts:
            raise ValueError("eval needs --cache or --prompts (with --target)")
        import tempfile

        cache_dir = args.work_dir or tempfile.mkdtemp(prefix="ppow-eval-")
        prompts = read_prompts(args.prompts, args.limit, template=args.template, target=tpath or _target_path(None))
        n_ctx = args.n_ctx or 2048
        tail = args.prompt_tail or (n_ctx - args.max_new - 8)  # whole prompt, unless it cannot fit
        if feature:  # the target's features along its own continuations: the engine's data path
            from .datagen import build_engine_cache

            build_engine_cache(tpath, cache_dir, prompts, template=args.template, max_new=args.max_new,
                               prompt_tail=tail, topk=1, layers=model.cfg["target_layers"], n_parallel=4,
                               progress=not args.quiet, n_gpu_layers=args.n_gpu_layers)
            expect = sha256_of(tpath)
        else:
            tpath = tpath or _target_path(None)
            target = load_target(tpath, args.backend, n_ctx=n_ctx, n_gpu_layers=args.n_gpu_layers)
            build_cache(target, cache_dir, prompts, max_new=args.max_new, prompt_tail=tail, topk=1,
                        shard_size=256, target_path=os.path.abspath(tpath), progress=not args.quiet)
            expect = target.identity
    cache = Cache(cache_dir, expect_target_sha256=expect)
    if info.get("target_sha256") not in (None, cache.meta["target"]["sha256"]):
        raise ValueError("the drafter was trained for another target than the evaluation target")
    check_cache(model, cache)
    ctx = args.ctx_len if args.ctx_len is not None else (info.get("ctx_len") or 0)
    cost = CostModel.from_json(args.cost_profile) if args.cost_profile else CostModel.linear(
        args.target_ms_1, args.target_ms_per_token, args.draft_ms)
    ks = [int(x) for x in str(args.k).split(",") if x]
    t0 = time.time()
    res = dict(drafter=os.path.abspath(ckpt), drafter_kind=model.kind, cache=os.path.abspath(cache_dir), ctx_len=ctx,
               sequences=len(cache.seq_len), target_sha256=cache.meta["target"]["sha256"],
               cost=cost.to_dict(), results=evaluate(model, vocab, cache, ks, ctx, cost, args.batch_size))
    res["seconds"] = round(time.time() - t0, 1)
    txt = json.dumps(res, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(txt)
    print(txt)
    return res


def run(argv=None):
    """Parse and run one stage; errors propagate (tests and library callers use this)."""
    args = build_parser().parse_args(argv)
    if args.cmd == "prompts":
        from .prompts import run_prompts

        args.target = _target_path(args.target)
        res = run_prompts(args)
        print(json.dumps(res))
        return res
    _fill_defaults(args)
    if args.cmd == "data":
        return cmd_data(args)
    if args.cmd == "eval":
        return cmd_eval(args)
    from .common import dist_cleanup, dist_setup

    import torch  # only the training stages need it: data and prompts run without torch (see cache_files.py)

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    rank, world, device = dist_setup()
    if args.device:
        device = args.device
    try:
        if args.cmd == "kd":
            return cmd_kd(args, rank, world, device)
        if args.cmd == "ppow":
            return cmd_ppow(args, rank, world, device)
    finally:
        dist_cleanup(world)


def main(argv=None):
    """Console entry point: exit status 0 on success, 2 with a one-line error on bad input."""
    from ppow.errors import PpowError

    from .cache_files import NonFiniteError  # torch-free: `data` and `prompts` never import torch

    try:
        run(argv)
    except (ValueError, FileNotFoundError, NotADirectoryError, NonFiniteError, PpowError) as e:
        print(f"ppow-train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ppow-train: interrupted (resume with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
