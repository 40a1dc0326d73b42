"""`ppow-train data` through the C++ engine: batched target generation with hidden-state capture.

The engine (`ppow._core.DataGen`, cpp/datagen.cpp) keeps `n_parallel` sequences in flight in one
llama_decode and hands back each finished sequence: its tokens, the target's argmax and top-k
(full softmax) at every generated position, and the target's hidden states at `layers` (bf16) at
every position, prompt included. Here they are grouped into shards in completion order and written
atomically, so a killed run loses at most the sequences of the unwritten shard and resumes without
redoing any prompt that reached a shard. RAM holds one shard at a time.

Cache layout (a superset of cache.py's; the KD/PPOW stages read it the same way):
  meta.json                   target identity (sha256), layers, template, top-k, settings, shard list
  shard_NNNNN.safetensors     tokens, greedy, topk_ids, topk_probs, seq_len, prompt_len (as cache.py),
                              scored uint8 [N] (1 where the target's logits were computed; prompt rows
                              carry their next prompt token as a one-hot label), hidden bf16 [N, L, H]
  shard_NNNNN.json            per sequence: prompt index, category, id, stop reason
"""

import json
import os
import time

import numpy as np

from ppow.feature_layers import default_layers
from ppow.prompt_files import tail_ids

from .cache_files import META, TargetMismatch, atomic_json, finished_shards, sha256_of, shard_name, write_safetensors

FORMAT_VERSION = 2


def parse_layers(text, n_layer):
    if text in (None, "", "auto"):
        return default_layers(n_layer)
    try:
        layers = [int(x) for x in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--layers must be comma-separated integers, got {text!r}") from None
    bad = [k for k in layers if not 0 <= k < n_layer]
    if bad:
        raise ValueError(f"--layers {bad} out of range: this target has hidden_states[0..{n_layer - 1}] on every "
                         f"row ({n_layer} layers; 0 = input embeddings)")
    return layers


def _check_resume(meta_path, identity, settings):
    """An existing cache must be for this target, these layers and these settings."""
    with open(meta_path) as f:
        old = json.load(f)
    if old.get("version") != FORMAT_VERSION:
        raise ValueError(f"{os.path.dirname(meta_path)} holds a cache of format {old.get('version')}, not "
                         f"{FORMAT_VERSION}: use another output dir")
    if old["target"]["sha256"] != identity:
        raise TargetMismatch(f"{os.path.dirname(meta_path)} was made for another target (sha256 "
                             f"{old['target']['sha256'][:16]}...); refusing to extend it")
    if old["settings"].get("layers") != settings["layers"]:
        raise ValueError(f"{os.path.dirname(meta_path)} holds features of layers {old['settings'].get('layers')}, "
                         f"not {settings['layers']}: refusing to extend it (use another output dir)")
    if old["settings"] != settings:
        diff = {k: (old["settings"].get(k), v) for k, v in settings.items() if old["settings"].get(k) != v}
        raise ValueError(f"{os.path.dirname(meta_path)} was made with other settings {diff} (cache, asked): "
                         "use another output dir")
    return old


def _write_shard(out_dir, number, records, prompts, n_layers, hidden_size):
    """records: dicts from the engine. Writes shard tensors and side info atomically."""
    cat = lambda k: np.concatenate([r[k] for r in records])  # noqa: E731
    hidden = cat("hidden_bf16") if n_layers else np.zeros((0, 0, 0), np.uint16)
    tensors = {
        "tokens": cat("tokens"),
        "greedy": cat("greedy"),
        "topk_ids": cat("topk_ids"),
        "topk_probs": cat("topk_probs").astype(np.float16),
        "scored": cat("scored"),
        "seq_len": np.array([len(r["tokens"]) for r in records], dtype=np.int32),
        "prompt_len": np.array([r["prompt_len"] for r in records], dtype=np.int32),
    }
    if n_layers:
        tensors["hidden"] = ("BF16", hidden.reshape(-1, n_layers, hidden_size))
    path = os.path.join(out_dir, shard_name(number))
    write_safetensors(path + ".safetensors.tmp", tensors)
    side = dict(index=[int(r["index"]) for r in records],
                category=[prompts[int(r["index"])].get("category", "all") for r in records],
                id=[prompts[int(r["index"])].get("id", "") for r in records],
                stop=[r["stop"] for r in records])
    summary = dict(file=shard_name(number) + ".safetensors", sequences=len(records),
                   positions=int(tensors["tokens"].size),
                   new_tokens=int(sum(len(r["tokens"]) - r["prompt_len"] for r in records)))
    # The json goes last: a shard counts as written once both files exist.
    os.replace(path + ".safetensors.tmp", path + ".safetensors")
    atomic_json(dict(summary=summary, **side), path + ".json")
    return summary


def open_engine(target_path, n_parallel, ctx_per_seq, threads=0, n_gpu_layers=0):
    """The batched data engine for `n_parallel` sequences of up to `ctx_per_seq` tokens each."""
    from ppow import _core
    from ppow.errors import PpowError

    mp = _core.ModelParams()
    mp.path, mp.n_threads, mp.n_parallel, mp.n_gpu_layers = target_path, threads, n_parallel, n_gpu_layers
    mp.n_ctx, mp.n_batch, mp.batch_invariant = n_parallel * ctx_per_seq + 256, 512, False
    try:
        return _core.DataGen(mp)
    except _core.EngineError as e:
        raise PpowError(str(e)) from None


TOPK_ON = ("auto", "host", "device")


def device_topk(topk_on, gpu_layers, temp):
    """Whether the engine computes each row's softmax/top-k in the decode graph (`--topk-on`).

    auto: there when the target has layers on a GPU and the data is greedy (on a GPU the full row of
    logits and its host softmax were the engine's ceiling; on a CPU the host threads are faster, as
    the graph runs one single-threaded op per sequence). Sampled data (temp > 0) draws from the full
    softmax on the host."""
    if topk_on not in TOPK_ON:
        raise ValueError(f"--topk-on must be one of {', '.join(TOPK_ON)}, got {topk_on!r}")
    if topk_on == "device" and temp > 0:
        raise ValueError("--topk-on device makes greedy data only; sampled data (--temp > 0) needs --topk-on host|auto")
    return topk_on == "device" or (topk_on == "auto" and gpu_layers > 0 and temp == 0)


def build_engine_cache(target_path, out_dir, prompts, *, template="raw", max_new=64, prompt_tail=64, topk=16,
                       layers=None, n_parallel=16, threads=0, temp=0.0, seed=0, shard_size=64, identity=None,
                       n_gpu_layers=0, host_threads=0, topk_on="auto", progress=True, log=print):
    """Generate from `prompts` (list of {text, category, id}) with the GGUF target and cache it.

    Returns the summary dict `ppow-train data` prints. Resumable (see the module docstring).
    """
    from ppow import _core
    from ppow.errors import PpowError
    from ppow.templates import parse_special


    if n_parallel < 1 or n_parallel > 256:
        raise ValueError(f"--n-parallel must be in [1, 256], got {n_parallel}")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    if max_new < 0 or topk < 1:
        raise ValueError("--max-new must be >= 0 and --topk >= 1")
    device_topk(topk_on, 0, temp)  # a bad --topk-on fails before the target loads
    if not os.path.isfile(target_path):
        raise PpowError(f"target model not found: {target_path}")
    identity = identity or sha256_of(target_path)
    os.makedirs(out_dir, exist_ok=True)

    ctx_per_seq = 1 + prompt_tail + max_new + 1
    gen = open_engine(target_path, n_parallel, ctx_per_seq, threads, n_gpu_layers)
    layers = [] if layers == [] else parse_layers(
        ",".join(map(str, layers)) if isinstance(layers, (list, tuple)) else layers, gen.n_layer)
    settings = dict(template=template, max_new=max_new, prompt_tail=prompt_tail, topk=topk, layers=layers,
                    temp=temp, seed=seed, n_prompts=len(prompts))
    meta_path = os.path.join(out_dir, META)
    if os.path.exists(meta_path):
        _check_resume(meta_path, identity, settings)
    meta = dict(version=FORMAT_VERSION, complete=False, settings=settings,
                target=dict(sha256=identity, path=os.path.abspath(target_path), vocab_size=gen.n_vocab,
                            n_layer=gen.n_layer, hidden_size=gen.n_embd, bos=gen.bos, eos=None, unk=None, pad=None),
                shards=[])
    atomic_json(meta, meta_path)

    done = finished_shards(out_dir, remove_tmp=True)
    done_idx = {i for _, side in done for i in side["index"]}
    next_shard = 1 + max((n for n, _ in done), default=-1)
    todo = [i for i in range(len(prompts)) if i not in done_idx]

    def prompt_ids(text, tokenize):
        return tail_ids(tokenize(text), gen.bos, prompt_tail)

    if parse_special(template):  # a chat template's turn markers must become control tokens, which
        from ppow import Generator  # DataGen.tokenize does not parse: tokenize with a Generator

        with Generator(target_path, n_ctx=64, n_threads=1) as tok:
            todo_ids = [prompt_ids(prompts[i]["text"], lambda t: tok.tokenize(t, True, True)) for i in todo]
    else:
        todo_ids = [prompt_ids(prompts[i]["text"], lambda t: gen.tokenize(t, True)) for i in todo]
    longest = max((len(t) for t in todo_ids), default=0)
    if longest + max_new + 1 > ctx_per_seq:  # --prompt-tail 0 (whole prompts): size the context for them
        ctx_per_seq = longest + max_new + 1
        del gen
        gen = open_engine(target_path, n_parallel, ctx_per_seq, threads, n_gpu_layers)
    params = _core.DataGenParams()
    params.max_new, params.topk, params.temp, params.seed, params.layers = max_new, topk, temp, seed, layers
    params.host_threads = host_threads
    params.device_topk = device_topk(topk_on, gen.gpu_layers, temp)

    from tqdm import tqdm

    bar = tqdm(total=len(prompts), initial=len(done_idx), desc="data", unit="seq", disable=not progress)
    pending, written = [], []
    H, L = gen.n_embd, len(layers)

    def on_done(rec):
        nonlocal next_shard
        pending.append(rec)
        bar.update(1)
        if len(pending) >= shard_size:
            written.append(_write_shard(out_dir, next_shard, pending, prompts, L, H))
            next_shard += 1
            pending.clear()

    t0 = time.time()
    try:
        stats = gen.run(todo_ids, params, ctx_per_seq, on_done, todo) if todo_ids else dict(t_decode_ms=0.0)
    except _core.EngineError as e:
        raise PpowError(str(e)) from None
    if pending:
        written.append(_write_shard(out_dir, next_shard, pending, prompts, L, H))
        pending.clear()
    seconds = time.time() - t0
    bar.close()

    all_done = sorted(finished_shards(out_dir), key=lambda x: x[0])
    meta["shards"] = [side["summary"] for _, side in all_done]
    meta["complete"] = sum(s["sequences"] for s in meta["shards"]) == len(prompts)
    atomic_json(meta, meta_path)
    new_this_run = sum(s["new_tokens"] for s in written)
    disk = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    return dict(out=out_dir, engine="ppow", sequences=sum(s["sequences"] for s in meta["shards"]),
                positions=sum(s["positions"] for s in meta["shards"]),
                new_tokens=sum(s["new_tokens"] for s in meta["shards"]),
                sequences_this_run=sum(s["sequences"] for s in written), new_tokens_this_run=new_this_run,
                resumed_sequences=len(done_idx), seconds=round(seconds, 2),
                new_tokens_per_second=round(new_this_run / seconds, 1) if seconds > 0 else 0.0,
                decode_seconds=round(stats["t_decode_ms"] / 1000, 2), n_parallel=n_parallel, layers=layers,
                topk=topk, topk_on="device" if params.device_topk else "host", disk_bytes=disk, complete=meta["complete"])
