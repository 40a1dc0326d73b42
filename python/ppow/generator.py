"""ppow.Generator: load a target (and optionally a drafter) once, generate many times.

Text in, text out; or tokens in, tokens out. Parameters are checked here so mistakes surface as
ValueError/PpowError with a readable message before anything reaches C++.
"""
from __future__ import annotations

import codecs
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from ppow.errors import PpowError

_GEN_KEYS = ("n_predict", "temp", "top_k", "top_p", "seed", "draft_max", "draft_min", "draft_p_min",
             "draft_policy", "use_drafter", "lookup", "ignore_eos", "stop")
_GEN_DEFAULTS = dict(n_predict=128, temp=0.0, top_k=0, top_p=1.0, seed=0, draft_max=8, draft_min=0,
                     draft_p_min=0.0, draft_policy="fixed", use_drafter=True, lookup=False, ignore_eos=False, stop=())


@dataclass
class Stats:
    """Per-call statistics. Times are wall-clock milliseconds on this machine."""
    prompt_tokens: int
    prompt_tokens_reused: int
    t_prompt_ms: float
    n_generated: int
    n_steps: int
    n_drafted: int
    n_accepted: int
    n_plain_steps: int
    n_probe_steps: int
    n_lookup_steps: int      # verify steps whose window came from prompt lookup (lookup=True)
    n_lookup_drafted: int
    n_lookup_accepted: int
    n_lookup_shadow: int     # declined lookup drafts (auto) judged against what was committed instead
    drafted_at: list
    accepted_at: list
    t_draft_ms: float
    t_draft_forward_ms: float
    t_draft_catchup_ms: float
    n_draft_catchup: int
    t_verify_ms: float
    t_sample_ms: float
    t_calibrate_ms: float    # part of t_prompt_ms: the auto policy's cost calibration, when it ran
    n_calibrations: int
    n_capture_steps: int     # steps whose verify batch captured the target's features (feature drafters)
    t_total_ms: float
    stop_reason: str
    # True where this output is token-identical to plain greedy decoding of the same target on this
    # backend (by the engine's batch-invariance rules, or because no draft was verified); why, or why not.
    exact: bool = True
    exact_reason: str = ""

    @property
    def tau(self) -> float:
        """Mean tokens committed per verify step (accepted drafts + the target's own token)."""
        return (self.n_accepted + self.n_steps) / self.n_steps if self.n_steps else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.n_accepted / self.n_drafted if self.n_drafted else 0.0

    @property
    def acceptance_by_position(self) -> list:
        return [a / d if d else 0.0 for a, d in zip(self.accepted_at, self.drafted_at)]

    @property
    def tokens_per_second(self) -> float:
        return 1000.0 * self.n_generated / self.t_total_ms if self.t_total_ms > 0 else 0.0

    @property
    def prompt_tokens_per_second(self) -> float:
        n = self.prompt_tokens - self.prompt_tokens_reused
        return 1000.0 * n / self.t_prompt_ms if self.t_prompt_ms > 0 else 0.0

    @property
    def t_overhead_ms(self) -> float:
        """The loop's own time: everything but the target's and drafter's forward passes."""
        return max(0.0, self.t_total_ms - self.t_verify_ms - self.t_draft_forward_ms)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        for k in ("tau", "acceptance_rate", "acceptance_by_position", "tokens_per_second",
                  "prompt_tokens_per_second", "t_overhead_ms"):
            d[k] = getattr(self, k)
        return d


@dataclass
class Generation:
    text: str
    tokens: list
    stats: Stats = field(repr=False)


def _check_file(path, what: str) -> str:
    if path is None:
        raise PpowError(f"no {what} model given")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PpowError(f"{what} model not found: {path}")
    return path


def _check_gen_params(p: dict) -> None:
    def need(ok, msg):
        if not ok:
            raise ValueError(msg)

    for k in ("n_predict", "top_k", "seed", "draft_max", "draft_min"):
        need(isinstance(p[k], int) and not isinstance(p[k], bool), f"{k} must be an integer, got {p[k]!r}")
    need(p["n_predict"] >= 0, f"n_predict must be >= 0, got {p['n_predict']}")
    need(p["draft_max"] >= 0, f"draft_max (k) must be >= 0, got {p['draft_max']}")
    need(p["draft_min"] >= 0, f"draft_min must be >= 0, got {p['draft_min']}")
    need(p["draft_min"] <= p["draft_max"], f"draft_min ({p['draft_min']}) must be <= draft_max ({p['draft_max']})")
    need(p["draft_max"] <= 64, f"draft_max must be <= 64, got {p['draft_max']}")
    need(p["temp"] >= 0 and p["temp"] != float("inf"), f"temperature must be >= 0, got {p['temp']}")
    need(p["top_k"] >= 0, f"top_k must be >= 0, got {p['top_k']}")
    need(0 < p["top_p"] <= 1, f"top_p must be in (0, 1], got {p['top_p']}")
    need(0 <= p["draft_p_min"] <= 1, f"draft_p_min must be in [0, 1], got {p['draft_p_min']}")
    need(0 <= p["seed"] < 2**64, f"seed must be in [0, 2**64), got {p['seed']}")
    need(p["draft_policy"] in ("fixed", "auto"), f"draft_policy must be 'fixed' or 'auto', got {p['draft_policy']!r}")
    need(not isinstance(p["stop"], str), "stop must be a list of strings, not a string")
    need(isinstance(p["lookup"], bool), f"lookup must be True or False, got {p['lookup']!r}")


class Generator:
    """Speculative (or plain) generation from a GGUF target with an optional GGUF drafter.

    Generator(target, drafter=None, n_ctx=4096, n_batch=512, n_threads=0, n_gpu_layers=0,
              n_gpu_layers_draft=None, n_threads_draft=None, batch_invariant=True, flash_attn="auto",
              drafter_kind="auto", pad_rows=None, verify_batch_max=None, **generation_defaults)

    n_threads_draft: threads of the drafter's forward passes (None: n_threads).

    n_gpu_layers / n_gpu_layers_draft: layers on the GPU (-1: all; the drafter's default: the
    target's). Greedy speculative output is exact by construction on the CPU, and on CUDA with every
    decode padded to one width (the GPU default); elsewhere it is not established (Generator.exact,
    Generation.stats.exact say which, and why; docs/gpu.md).

    pad_rows, verify_batch_max: decode shapes (docs/gpu.md). pad_rows=W pads every target decode of
    fewer than W rows to W rows (throw-away rows in a second sequence, with logits), so every decode
    takes the same kernels; verify_batch_max caps the rows of one verify batch (default 7 on the
    CPU, W with pad_rows or on a GPU, where pad_rows defaults to 4 with batch_invariant). None: the
    environment variables PPOW_PAD_ROWS / PPOW_VERIFY_BATCH_MAX, else those defaults.

    drafter: a GGUF language model sharing the target's vocabulary (kind 'model'), or an EAGLE-3
    drafter in llama.cpp's eagle3 format that reads the target's hidden states (kind 'feature');
    drafter_kind='auto' picks the kind from the file, 'model'/'feature' insist on one.

    batch_invariant: on the CPU with several threads, decode every single target token as a
    two-row batch (one throw-away row) past ~192 tokens of context, so plain steps and verify
    batches take the same attention kernel and greedy speculative output stays token-identical
    to plain at any depth. Costs plain steps there 10-19 % on a 2-core CPU (measured); False
    gives llama.cpp's own one-token path (what llama.cpp itself outputs, not batch-invariant).

    lookup (a generation parameter, default False): also draft from the text itself (prompt lookup:
    the tokens that followed the latest earlier occurrence of the last two tokens, or of the last
    one) — with draft_policy="auto" only where its learned acceptance beats both plain decoding and
    the drafter; works with no drafter loaded. Greedy output stays exact; sampled output keeps the
    target's distribution (a lookup draft is a one-hot q).

    flash_attn: the target's attention, "auto" (llama.cpp's choice: flash attention on a CPU),
    "on" or "off". Without it one-token decodes differ from batch rows at every depth, so with
    batch_invariant every plain step is a two-row batch; on a CPU "off" still decodes deep contexts
    faster for targets with many attention heads (SmolLM2 at 512+ tokens: README, by depth).
    """

    def __init__(self, target, drafter=None, *, n_ctx: int = 4096, n_batch: int = 512, n_threads: int = 0,
                 n_gpu_layers: int = 0, n_gpu_layers_draft: int | None = None, n_threads_draft: int | None = None,
                 batch_invariant: bool = True, flash_attn: str = "auto", drafter_kind: str = "auto",
                 pad_rows: int | None = None, verify_batch_max: int | None = None, **defaults):
        from ppow import _core

        unknown = set(defaults) - set(_GEN_KEYS)
        if unknown:
            raise TypeError(f"unknown generation parameter(s): {', '.join(sorted(unknown))}")
        for k, v, lo in (("n_ctx", n_ctx, 8), ("n_batch", n_batch, 1), ("n_threads", n_threads, 0),
                         ("n_threads_draft", n_threads if n_threads_draft is None else n_threads_draft, 0)):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{k} must be an integer >= {lo}, got {v!r}")
        for k, v in (("n_gpu_layers", n_gpu_layers), ("n_gpu_layers_draft", n_gpu_layers_draft)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < -1):
                raise ValueError(f"{k} must be an integer >= -1 (-1: all layers), got {v!r}")
        for k, v, lo in (("pad_rows", pad_rows, 0), ("verify_batch_max", verify_batch_max, 1)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= 64):
                raise ValueError(f"{k} must be an integer in [{lo}, 64], got {v!r}")
        self._defaults = {**_GEN_DEFAULTS, **defaults}
        _check_gen_params(self._defaults)

        def model_params(path, ngl):
            mp = _core.ModelParams()
            mp.path, mp.n_ctx, mp.n_batch, mp.n_threads, mp.n_gpu_layers = path, n_ctx, n_batch, n_threads, ngl
            mp.batch_invariant = bool(batch_invariant)
            return mp

        if flash_attn not in ("auto", "on", "off"):
            raise ValueError(f"flash_attn must be 'auto', 'on' or 'off', got {flash_attn!r}")
        tp = model_params(_check_file(target, "target"), n_gpu_layers)
        tp.flash_attn = flash_attn
        tp.pad_rows = -1 if pad_rows is None else pad_rows  # -1: PPOW_PAD_ROWS or 0
        dp = None
        if drafter is not None:
            ngld = n_gpu_layers if n_gpu_layers_draft is None else n_gpu_layers_draft
            dp = model_params(_check_file(drafter, "drafter"), ngld)
            if n_threads_draft is not None:
                dp.n_threads = n_threads_draft
            if drafter_kind not in ("auto", "model", "feature"):
                raise ValueError(f"drafter_kind must be 'auto', 'model' or 'feature', got {drafter_kind!r}")
            dp.kind = drafter_kind
        try:
            self._engine = _core.Engine(tp, dp)
        except _core.EngineError as e:
            raise PpowError(str(e)) from None
        if verify_batch_max is not None:
            self._engine.verify_batch_max = verify_batch_max
        self._lock = threading.Lock()
        self.target_path, self.drafter_path = tp.path, (dp.path if dp else None)

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        """Free both models. The generator cannot be used afterwards."""
        eng, self._engine = getattr(self, "_engine", None), None
        if eng is not None:
            eng.cancel()
            with self._lock:
                del eng

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def _live(self):
        if self._engine is None:
            raise PpowError("this Generator is closed")
        return self._engine

    @property
    def has_drafter(self) -> bool:
        return self._live.has_drafter

    @property
    def drafter_kind(self) -> str:
        """'model' (a standalone GGUF language model), 'feature' (an eagle3 drafter reading the
        target's hidden states) or '' without a drafter."""
        return self._live.drafter_kind

    @property
    def n_ctx(self) -> int:
        return self._live.n_ctx

    @property
    def backend(self) -> dict:
        """Where the models run and what that means for exactness: gpu_devices, n_gpu_layers (asked),
        gpu_layers (offloaded: 0 without a GPU device), the drafter's (drafter_n_gpu_layers,
        drafter_gpu_layers), n_threads, flash_attn, batch_invariant, pads_single (the CPU's one-token
        padding), pad_rows, verify_batch_max, exact and exact_reason."""
        return dict(self._live.backend)

    @property
    def exact(self) -> bool:
        """Whether greedy speculative output is token-identical to plain greedy output by construction
        on this backend with these settings (a generation that verified no draft is exact anyway:
        Generation.stats.exact)."""
        return bool(self._live.backend["exact"])

    @property
    def exact_reason(self) -> str:
        return self._live.backend["exact_reason"]

    @property
    def verify_batch_max(self) -> int:
        """Most rows of one verify batch; longer windows are verified in chunks of this size."""
        return self._live.verify_batch_max

    @property
    def n_vocab(self) -> int:
        return self._live.n_vocab

    # -- tokens ----------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list:
        if not isinstance(text, str):
            raise TypeError("text must be a str")
        return self._live.tokenize(text, add_special, parse_special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        try:
            return self._live.detokenize(list(tokens)).decode("utf-8", errors="replace")
        except Exception as e:  # EngineError for ids outside the vocabulary
            raise PpowError(str(e)) from None

    # -- generation ------------------------------------------------------------------------------
    def _params(self, overrides: dict):
        from ppow import _core

        unknown = set(overrides) - set(_GEN_KEYS)
        if unknown:
            raise TypeError(f"unknown generation parameter(s): {', '.join(sorted(unknown))}")
        p = {**self._defaults, **overrides}
        _check_gen_params(p)
        gp = _core.GenParams()
        for k in _GEN_KEYS:
            if k == "draft_policy":
                gp.policy = getattr(_core.DraftPolicy, p[k])
            elif k == "stop":
                gp.stop = [str(s) for s in p[k]]
            else:
                setattr(gp, k, p[k])
        return gp

    def _prompt_ids(self, prompt) -> list:
        if isinstance(prompt, str):
            ids = self.tokenize(prompt, add_special=True)
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("the prompt is empty")
        return ids

    def generate(self, prompt, **params) -> Generation:
        """Generate from a prompt (str, or a list of token ids). Returns text, tokens and Stats."""
        return self._run(prompt, params, on_text=None)

    def stream(self, prompt, **params) -> Iterator[str]:
        """Yield text pieces as they are accepted. Closing the iterator early cancels the run."""
        pieces: queue.Queue = queue.Queue()
        done = object()
        box = {}

        def work():
            try:
                box["result"] = self._run(prompt, params, on_text=pieces.put)
            except BaseException as e:  # surfaced in the consumer
                box["error"] = e
            finally:
                pieces.put(done)

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while (item := pieces.get()) is not done:
                text = decoder.decode(item)
                if text:
                    yield text
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            if worker.is_alive():
                self.cancel()
                worker.join()
        if "error" in box:
            raise box["error"]
        self.last_stats = box["result"].stats

    def cancel(self) -> None:
        """Stop a running generate()/stream() at its next step; safe from any thread."""
        if self._engine is not None:
            self._engine.cancel()

    def _run(self, prompt, params, on_text) -> Generation:
        from ppow import _core

        gp = self._params(params)
        eng = self._live
        ids = self._prompt_ids(prompt)
        with self._lock:
            try:
                out = eng.generate(ids, gp, on_text)
            except _core.EngineError as e:
                raise PpowError(str(e)) from None
        stats = Stats(**out["stats"])
        self.last_stats = stats
        return Generation(text=out["text"].decode("utf-8", errors="replace"), tokens=list(out["tokens"]), stats=stats)

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, tokens: Sequence[int], n_last: int = 1):
        """The target's logits (float32 array, n_last x n_vocab) for the last n_last positions of
        `tokens`, decoded as one batch after the longest prefix already in the target's cache."""
        from ppow import _core

        ids = self._prompt_ids(tokens)
        if not isinstance(n_last, int) or not 1 <= n_last <= len(ids):
            raise ValueError(f"n_last must be an integer in [1, {len(ids)}], got {n_last!r}")
        eng = self._live
        with self._lock:
            try:
                return eng.score(ids, n_last)
            except _core.EngineError as e:
                raise PpowError(str(e)) from None

    def features(self, tokens: Sequence[int], layers: Sequence[int], n_last: int = 1):
        """The target's hidden states at `layers` for every position of `tokens`, with the logits of
        the last n_last positions: returns (logits [n_last, n_vocab], features [len(layers),
        len(tokens), n_embd]), both float32. Layers count as Hugging Face's `hidden_states`: 0 = the
        (scaled) input embeddings, k = the input of layer k, n_layer = the final norm's output (only
        on rows with logits, so it needs n_last = len(tokens)). Decodes from an empty cache; capture
        leaves the logits bit-identical to score()'s."""
        from ppow import _core

        ids = self._prompt_ids(tokens)
        if not isinstance(n_last, int) or not 1 <= n_last <= len(ids):
            raise ValueError(f"n_last must be an integer in [1, {len(ids)}], got {n_last!r}")
        layers = list(layers)
        if not layers or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in layers):
            raise ValueError(f"layers must be a non-empty list of integers >= 0, got {layers!r}")
        eng = self._live
        with self._lock:
            try:
                return eng.score_features(ids, n_last, layers)
            except _core.EngineError as e:
                raise PpowError(str(e)) from None

    def draft_window(self, tokens: Sequence[int], k: int):
        """The drafter's greedy window of k tokens after `tokens` (the target takes all but the last
        as a prompt, from an empty cache) and each step's logits over the draft vocabulary:
        (list of k target ids, float32 array [k, n_draft_vocab]). For checking a drafter against
        its training code; generation does not need it."""
        from ppow import _core

        ids = self._prompt_ids(tokens)
        if len(ids) < 2:
            raise ValueError("draft_window needs at least 2 tokens")
        if not isinstance(k, int) or not 1 <= k <= 64:
            raise ValueError(f"k must be an integer in [1, 64], got {k!r}")
        eng = self._live
        with self._lock:
            try:
                return eng.draft_window(ids, k)
            except _core.EngineError as e:
                raise PpowError(str(e)) from None

    @property
    def n_layer(self) -> int:
        """Target layers (hidden_states has n_layer + 1 entries)."""
        return self._live.n_layer

    @property
    def n_embd(self) -> int:
        return self._live.n_embd

    # -- costs -----------------------------------------------------------------------------------
    def cost_profile(self, k_max: int = 8) -> dict:
        """Measure target verify cost per batch size and drafter cost per token on this machine
        (the JSON that `ppow-train ppow --cost-profile` reads)."""
        import json

        eng = self._live
        with self._lock:
            eng.calibrate(k_max)
        return json.loads(eng.cost_profile())
