"""On-disk cache of the target's behaviour on its own text.

Layout of a cache dir:
  meta.json                  target identity (sha256 of the target file), specials, settings, shard list
  shard_00000.safetensors    tokens int32 [N]      input token ids (sequences concatenated)
                             greedy int32 [N]      the target's argmax next token at each position
                             topk_ids int32 [N,K]  the target's top-K next tokens
                             topk_probs f16 [N,K]  their probabilities (softmax over the full vocabulary)
                             seq_len int32 [S]     length of each sequence
                             prompt_len int32 [S]  how many of its tokens are prompt (rest: continuation)
  shard_00000.json           per-sequence category and prompt id

Every sequence is exactly what the target saw (BOS + prompt tail + its greedy continuation), so at any
position whose following tokens are the target's own greedy tokens ("on trajectory"), comparing drafted
tokens with `greedy` IS greedy verification: the target's token after an accepted prefix is the cached one.
"""

import json
import os
import time

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ppow.prompt_files import tail_ids

from .data import SEED_WORDS

from .cache_files import META, TargetMismatch, finished_shards, shard_name  # noqa: F401 (re-exported)

FORMAT_VERSION = 1


def check_target(meta, expect_sha256, what="cache"):
    if expect_sha256 is not None and meta["target"]["sha256"] != expect_sha256:
        raise TargetMismatch(
            f"this {what} was made for target sha256 {meta['target']['sha256'][:16]}... "
            f"({meta['target'].get('path')}), not for the given target (sha256 {expect_sha256[:16]}...); "
            "rebuild it with `ppow-train data` for this target")


def prepare_prompt_ids(target, text, prompt_tail):
    """BOS + the last prompt_tail tokens of the prompt (the target sees exactly what is cached)."""
    return tail_ids(target.tokenize(text), target.bos_id, prompt_tail)


def seed_prompts(target, n, seed, sample_tokens, k):
    """Prompts with no data: BOS + a seed word, then `sample_tokens` tokens sampled from the target's top-k.

    Greedy continuation of one prefix is deterministic, so the sampled tokens give the variety. They
    count as prompt (prompt_len covers them): only the greedy part is on the target's trajectory.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        word = SEED_WORDS[i % len(SEED_WORDS)]
        ids = target.tokenize(word)
        for _ in range(sample_tokens):
            _, tid, tp = (x[-1] for x in _topk_last(target, ids, k))
            j = int(torch.multinomial(tp.float() / tp.float().sum(), 1, generator=g))
            ids.append(int(tid[j]))
        out.append({"ids": ids, "category": "seed", "id": f"seed{i}"})
    return out


def _topk_last(target, ids, k):
    from .data import topk_rows

    return topk_rows(target.logits(ids)[-1:], k)


def build_cache(target, out_dir, prompts=None, *, max_new=64, prompt_tail=64, topk=16, shard_size=256,
                seed_prefixes=0, seed_sample_tokens=3, seed=0, target_path=None, progress=True, log=print):
    """Continue prompts (list of {text|ids, category, id}) greedily with the target and cache them.

    Resumable: finished shards are kept; meta.json must describe the same target and settings.
    """
    os.makedirs(out_dir, exist_ok=True)
    settings = dict(max_new=max_new, prompt_tail=prompt_tail, topk=topk, shard_size=shard_size,
                    seed_prefixes=seed_prefixes, seed_sample_tokens=seed_sample_tokens, seed=seed,
                    n_prompts=None if prompts is None else len(prompts))
    meta_path = os.path.join(out_dir, META)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        check_target(old, target.identity)
        if old["settings"] != settings:
            raise ValueError(f"{out_dir} holds a cache made with other settings {old['settings']}; "
                             "use another output dir")
    if prompts is None:
        if not seed_prefixes:
            raise ValueError("no prompts and no --seed-prefixes")
        prompts = seed_prompts(target, seed_prefixes, seed, seed_sample_tokens, topk)
    meta = dict(version=FORMAT_VERSION, complete=False, settings=settings,
                target=dict(sha256=target.identity, path=target_path, vocab_size=target.vocab_size,
                            **target.specials()),
                shards=[])
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(meta_path + ".tmp", meta_path)

    n_shards = (len(prompts) + shard_size - 1) // shard_size
    try:
        from tqdm import tqdm
        bar = tqdm(total=len(prompts), desc="data", disable=not progress, unit="prompt")
    except ImportError:  # pragma: no cover
        bar = None
    t0, new_tokens = time.time(), 0
    for s in range(n_shards):
        chunk = prompts[s * shard_size:(s + 1) * shard_size]
        path = os.path.join(out_dir, shard_name(s))
        if os.path.exists(path + ".safetensors") and os.path.exists(path + ".json"):
            with open(path + ".json") as f:
                meta["shards"].append(json.load(f)["summary"])
            if bar is not None:
                bar.update(len(chunk))
            continue
        rows = dict(tokens=[], greedy=[], topk_ids=[], topk_probs=[], seq_len=[], prompt_len=[])
        side = dict(category=[], id=[])
        for p in chunk:
            ids = p["ids"] if "ids" in p else prepare_prompt_ids(target, p["text"], prompt_tail)
            toks, g, ti, tp = target.run(ids, max_new, topk)
            rows["tokens"].append(torch.tensor(toks, dtype=torch.int32))
            rows["greedy"].append(g)
            rows["topk_ids"].append(ti)
            rows["topk_probs"].append(tp)
            rows["seq_len"].append(len(toks))
            rows["prompt_len"].append(len(ids))
            side["category"].append(p.get("category", "all"))
            side["id"].append(p.get("id", ""))
            new_tokens += len(toks) - len(ids)
            if bar is not None:
                bar.update(1)
        tensors = {k: torch.cat(v) for k, v in rows.items() if k not in ("seq_len", "prompt_len")}
        tensors["seq_len"] = torch.tensor(rows["seq_len"], dtype=torch.int32)
        tensors["prompt_len"] = torch.tensor(rows["prompt_len"], dtype=torch.int32)
        summary = dict(file=shard_name(s) + ".safetensors", sequences=len(chunk),
                       positions=int(tensors["tokens"].numel()))
        save_file(tensors, path + ".safetensors.tmp")
        os.replace(path + ".safetensors.tmp", path + ".safetensors")  # atomic: a kill leaves no half shard
        with open(path + ".json.tmp", "w") as f:
            json.dump(dict(summary=summary, **side), f)
        os.replace(path + ".json.tmp", path + ".json")
        meta["shards"].append(summary)
    if bar is not None:
        bar.close()
    meta["complete"] = True
    meta["seconds"] = round(time.time() - t0, 2)
    meta["new_tokens_this_run"] = new_tokens
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(meta_path + ".tmp", meta_path)
    return meta


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _is_int(t):
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def check_meta(meta, path):
    """meta.json must describe shards the loader can open (it may come from another machine)."""
    if not (isinstance(meta, dict) and isinstance(meta.get("target"), dict) and isinstance(meta.get("shards"), list)):
        raise ValueError(f"{path}: meta.json must be an object with 'target' and 'shards'")
    if not isinstance(meta.get("settings", {}), dict):
        raise ValueError(f"{path}: meta.json 'settings' must be an object")
    for sh in meta["shards"]:
        f = sh.get("file") if isinstance(sh, dict) else None
        if not isinstance(f, str) or os.path.basename(f) != f or not f.endswith(".safetensors"):
            raise ValueError(f"{path}: meta.json lists a shard {sh!r} that is not a .safetensors file of the cache dir")


def check_shard(t, where, vocab_size=None, n_seq=None):
    """Refuse a shard whose tensors do not fit together: every later index into them relies on this."""
    def need(ok, msg):
        if not ok:
            raise ValueError(f"{where}: {msg}")

    def shape(k):
        return list(t[k].shape) if k in t else None

    for k in ("tokens", "greedy", "topk_ids", "topk_probs", "seq_len", "prompt_len"):
        need(k in t, f"no {k!r} tensor")
    for k in ("tokens", "greedy", "topk_ids", "seq_len", "prompt_len", "scored"):
        need(k not in t or _is_int(t[k]) or (k == "scored" and t[k].dtype == torch.bool),
             f"{k} has dtype {t[k].dtype if k in t else ''}, expected integers")
    for k in ("topk_probs", "hidden"):
        need(k not in t or t[k].dtype.is_floating_point,
             f"{k} has dtype {t[k].dtype if k in t else ''}, expected floats")
    N = t["tokens"].shape[0] if t["tokens"].dim() == 1 else -1
    need(N >= 0, f"tokens has shape {shape('tokens')}, expected one row of ids")
    need(shape("greedy") == [N], f"greedy has shape {shape('greedy')}, expected [{N}]")
    K = t["topk_ids"].shape[-1] if t["topk_ids"].dim() == 2 else 0
    need(shape("topk_ids") == [N, K] and K >= 1, f"topk_ids has shape {shape('topk_ids')}, expected [{N}, K]")
    need(shape("topk_probs") == [N, K], f"topk_probs has shape {shape('topk_probs')}, topk_ids {shape('topk_ids')}")
    S = t["seq_len"].shape[0] if t["seq_len"].dim() == 1 else -1
    need(S >= 0 and shape("prompt_len") == [S],
         f"seq_len / prompt_len have shapes {shape('seq_len')} / {shape('prompt_len')}, expected [S]")
    need(n_seq is None or S == n_seq, f"{S} sequences, its .json lists {n_seq}")
    need("scored" not in t or shape("scored") == [N], f"scored has shape {shape('scored')}, expected [{N}]")
    need("hidden" not in t or (t["hidden"].dim() == 3 and t["hidden"].shape[0] == N),
         f"hidden has shape {shape('hidden')}, expected [{N}, layers, hidden size]")
    seq_len, prompt_len = t["seq_len"].long(), t["prompt_len"].long()
    need(bool((seq_len >= 1).all()) and int(seq_len.sum()) == N, f"sequence lengths do not add up to the {N} positions")
    need(bool(((prompt_len >= 0) & (prompt_len <= seq_len)).all()), "a prompt is longer than its sequence")
    for k in ("tokens", "greedy", "topk_ids"):
        ids = t[k]
        need(ids.numel() == 0 or (int(ids.min()) >= 0 and (vocab_size is None or int(ids.max()) < vocab_size)),
             f"{k} has token ids outside the target vocabulary [0, {vocab_size})")
    probs = t["topk_probs"].float()
    need(bool(torch.isfinite(probs).all()) and bool((probs >= 0).all()), "topk_probs has negative or non-finite values")


def _check_same_training_set(meta0, meta, path0, path):
    """Caches trained on together: one target, the same feature layers and top-k width."""
    if meta["target"].get("sha256") != meta0["target"].get("sha256"):
        raise ValueError(f"{path}: made with another target than {path0}")
    for key in ("layers", "topk"):
        a, b = meta0.get("settings", {}).get(key), meta.get("settings", {}).get(key)
        if a != b:
            raise ValueError(f"{path}: {key} {b} differ from {path0}'s {a}")


class Cache:
    """All shards of a cache dir in memory, with per-position bookkeeping for windows."""

    def __init__(self, path, expect_target_sha256=None, max_shards=None, allow_incomplete=False):
        """path: a cache dir, or a list of them (one training set: same target, layers and top-k)."""
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        if not paths:
            raise ValueError("no cache given")
        parts, self.categories, self.ids = [], [], []
        for i, p in enumerate(paths):
            meta = self._read_meta(p, expect_target_sha256, allow_incomplete)
            if i == 0:
                self.meta = meta
            else:
                _check_same_training_set(self.meta, meta, paths[0], p)
            self._load_shards(p, meta, max_shards, parts)
        self._init({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
        self.path = paths[0] if len(paths) == 1 else paths

    @staticmethod
    def _read_meta(path, expect_target_sha256, allow_incomplete):
        meta = _read_json(os.path.join(path, META))
        check_meta(meta, path)
        check_target(meta, expect_target_sha256)
        if not meta.get("complete"):
            if not allow_incomplete:
                raise ValueError(f"{path}: cache is incomplete (re-run `ppow-train data` to finish it, or train on "
                                 "the shards written so far with --allow-incomplete-cache)")
            if meta.get("version") == 2:  # engine caches list their shards as they are written
                meta["shards"] = [side["summary"] for _, side in sorted(finished_shards(path), key=lambda x: x[0])]
                check_meta(meta, path)
        return meta

    def _load_shards(self, path, meta, max_shards, parts):
        vocab = meta["target"].get("vocab_size")
        vocab = vocab if isinstance(vocab, int) and vocab > 0 else None
        n_before = len(parts)
        for sh in meta["shards"][:max_shards]:
            where = os.path.join(path, sh["file"])
            try:
                t = load_file(where)
            except Exception as e:  # noqa: BLE001 - OSError, or safetensors' own error type on a bad header
                raise ValueError(f"{where}: unreadable shard ({str(e)[:200]})") from None
            side = _read_json(where.replace(".safetensors", ".json"))
            cats, ids = (side.get("category"), side.get("id")) if isinstance(side, dict) else (None, None)
            if not isinstance(cats, list) or not isinstance(ids, list) or len(cats) != len(ids):
                raise ValueError(f"{where}: its .json needs lists 'category' and 'id' of one entry per sequence")
            check_shard(t, where, vocab, len(cats))
            if parts and (set(t) != set(parts[0]) or t["topk_ids"].shape[1] != parts[0]["topk_ids"].shape[1]):
                raise ValueError(f"{where}: its tensors or top-k width differ from the first shard's")
            parts.append(t)
            self.categories += cats
            self.ids += ids
        if len(parts) == n_before:
            raise ValueError(f"{path}: the cache has no shards")

    @classmethod
    def from_tensors(cls, tensors, meta, categories=None):
        self = cls.__new__(cls)
        self.meta, self.path = meta, None
        n = len(tensors["seq_len"])
        self.categories = categories or ["all"] * n
        self.ids = [str(i) for i in range(n)]
        self._init(tensors)
        return self

    def _init(self, t):
        # Engine caches (datagen.py) add the target's hidden states (bf16 [N, L, H], kept as stored)
        # and which rows were scored by the target (prompt rows carry a one-hot label instead).
        self.hidden = t.get("hidden")
        self.scored = t["scored"].bool() if "scored" in t else torch.ones(len(t["tokens"]), dtype=torch.bool)
        self.layers = self.meta.get("settings", {}).get("layers")
        self.tokens = t["tokens"].long()
        self.greedy = t["greedy"].long()
        self.topk_ids = t["topk_ids"].long()
        self.topk_probs = t["topk_probs"].float()
        self.seq_len = t["seq_len"].long()
        self.prompt_len = t["prompt_len"].long()
        self.seq_start = torch.cumsum(self.seq_len, 0) - self.seq_len
        N = len(self.tokens)
        self.seq_of = torch.repeat_interleave(torch.arange(len(self.seq_len)), self.seq_len)
        seq_end = (self.seq_start + self.seq_len)[self.seq_of]  # exclusive end per position
        nxt = torch.cat([self.tokens[1:], self.tokens.new_zeros(1)])
        idx = torch.arange(N)
        self.on_traj = (idx + 1 < seq_end) & (nxt == self.greedy)
        # run[i]: how many consecutive on-trajectory positions start at i (vectorised reverse scan)
        z = np.where(self.on_traj.numpy(), N, np.arange(N))
        next_break = np.minimum.accumulate(z[::-1])[::-1]
        self.run = torch.from_numpy(np.minimum(next_break, seq_end.numpy() - 1) - np.arange(N)).clamp_min(0)
        self.seq_end = seq_end

    @property
    def topk(self):
        return self.topk_ids.shape[1]

    def __len__(self):
        return len(self.tokens)

    def window_starts(self, k, continuation_only=True):
        """Positions t where a k-token window is exactly verifiable from the cache (run[t] >= k-1)."""
        ok = self.run >= (k - 1)
        if continuation_only:
            pos_in_seq = torch.arange(len(self.tokens)) - self.seq_start[self.seq_of]
            ok &= pos_in_seq >= (self.prompt_len[self.seq_of] - 1)
        return torch.nonzero(ok).flatten()

    def context(self, t, ctx_len):
        """Token ids of the drafter's context ending at position t (inclusive), at most ctx_len long."""
        s = int(self.seq_start[self.seq_of[t]])
        lo = s if ctx_len <= 0 else max(s, t - ctx_len + 1)
        return self.tokens[lo:t + 1]

    def token_counts(self, vocab_size):
        """How often each target id appears as input or as the target's token (for the draft vocab)."""
        c = torch.bincount(self.tokens, minlength=vocab_size)
        return c + torch.bincount(self.greedy, minlength=vocab_size)
