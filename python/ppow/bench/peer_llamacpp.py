"""Peer: llama-cpp-python's own speculative decoding path, with the same drafter GGUF.

llama-cpp-python 0.3.x speculates through `Llama(draft_model=LlamaDraftModel)`: before each
target step, `Llama.generate` asks the draft model for tokens following the committed ids, then
evaluates them in one batch (logits for every position) and keeps the prefix its sampler agrees
with. The package ships only prompt-lookup drafting, so GGUFDraftModel below drafts greedily
with a second `Llama` holding the drafter, reusing its KV cache across calls.

Models are loaded with llama-cpp-python's defaults except for settings that make it run the same
llama.cpp kernels as ppow: swa_full=True (so rejected positions can be removed from Gemma 3's
sliding-window cache), flash attention on (llama-cpp-python turns it off; ppow leaves llama.cpp's
"auto", which enables it on CPU), the same thread count and, unless repack=True, no CPU weight
repacking. Repacked weights switch matmul kernels with the batch size, so a verify batch does not
reproduce single-token logits and greedy speculative output drifts from plain output (and even
plain output depends on how the prompt was split into batches); with the same weight layout
both engines run the same kernels.
"""
from __future__ import annotations

import os
import time

import numpy as np
from llama_cpp.llama_speculative import LlamaDraftModel

from ppow.bench.runners import Measure
from ppow.gguf_keys import DRAFT_VOCAB_D2T as KEY_D2T
from ppow.gguf_keys import DRAFT_VOCAB_UNK as KEY_UNK
from ppow.llamacpp_params import model_params


def read_d2t(path):
    """The draft->target map of a reduced-vocabulary ppow drafter GGUF, or None.

    Only called for drafters that are not full-vocabulary: GGUFReader parses every KV, which takes
    long for a 262k-token tokenizer, while a reduced-vocabulary drafter carries no tokenizer."""
    import gguf

    field = gguf.GGUFReader(path).fields.get(KEY_D2T)
    return None if field is None else np.asarray(field.contents(), dtype=np.int64)


def load_llama(path, n_ctx, n_threads, draft_model=None, repack=False, n_gpu_layers=0):
    import llama_cpp

    # 0 means all hardware threads, as in ppow (Llama's own default for generation is half of them).
    n_threads = n_threads or os.cpu_count() or 1
    with model_params(repack):
        # logits_all must be passed explicitly with a draft model: Llama turns it on by itself but
        # sizes its logits store from the argument, n_batch rows, and fails past position n_batch.
        return llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=n_threads,
                               n_threads_batch=n_threads, swa_full=True, flash_attn=True, draft_model=draft_model,
                               n_gpu_layers=n_gpu_layers,
                               logits_all=draft_model is not None, verbose=False)


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n]))[0]
    return int(diff[0]) if len(diff) else n


def sync_cache(llm, ids, need_logits=True):
    """Make llm's KV cache hold exactly `ids`, reusing the common prefix and decoding the rest;
    with need_logits at least the last token is decoded again so its logits are current.

    Cached positions are reused, never recomputed: llama.cpp's results depend slightly on how
    tokens are split into batches, and ppow reuses its cache the same way, so both engines see
    the same prompt KV values in every run on a prompt."""
    keep = common_prefix(llm._input_ids, ids)
    if need_logits:
        keep = min(keep, len(ids) - 1)
    llm.n_tokens = keep
    if keep < len(ids):
        llm.eval(list(ids[keep:]))


class GGUFDraftModel(LlamaDraftModel):
    """A LlamaDraftModel drafting k tokens greedily with a GGUF model.

    Drafter ids are target ids, or for a reduced-vocabulary drafter row i of its logits is target
    token d2t[i] and target tokens outside that set are fed as its unknown id (as ppow does).
    Every draft is logged as (position, tokens) so acceptance can be counted afterwards."""

    def __init__(self, path, n_ctx, n_threads, n_target_vocab, k=4, repack=False, n_gpu_layers=0):
        import llama_cpp

        self.llm = load_llama(path, n_ctx, n_threads, repack=repack, n_gpu_layers=n_gpu_layers)
        self.n_vocab = self.llm.n_vocab()
        reduced = self.n_vocab != n_target_vocab or KEY_UNK in self.llm.metadata
        d2t = read_d2t(path) if reduced else None
        if d2t is None:
            if self.n_vocab != n_target_vocab:
                raise ValueError(f"drafter vocabulary ({self.n_vocab}) differs from the target's ({n_target_vocab}) "
                                 f"and the file has no {KEY_D2T} map")
            self.d2t = self.t2d = None
        else:
            if len(d2t) != self.n_vocab or d2t.max() >= n_target_vocab:
                raise ValueError(f"{KEY_D2T} does not fit the drafter ({len(d2t)} entries, {self.n_vocab} tokens)")
            unk = int(self.llm.metadata.get(KEY_UNK, 0))
            unk = unk if 0 <= unk < len(d2t) else 0
            self.d2t = d2t
            self.t2d = np.full(n_target_vocab, unk, dtype=np.int64)
            self.t2d[d2t] = np.arange(len(d2t))
        self.k = k
        self.log: list = []
        self._logits = lambda: np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm.ctx, -1),
                                                     shape=(self.n_vocab,))

    def to_draft(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        return ids if self.t2d is None else self.t2d[ids]

    def prime(self, ids):
        sync_cache(self.llm, self.to_draft(ids))

    def __call__(self, input_ids, /, **kwargs):
        sync_cache(self.llm, self.to_draft(input_ids))
        rows = []
        for j in range(self.k):
            rows.append(int(np.argmax(self._logits())))
            if j + 1 < self.k:  # the last draft token needs no forward pass
                self.llm.eval([rows[-1]])
        out = np.asarray(rows, dtype=np.int64) if self.d2t is None else self.d2t[rows]
        self.log.append((len(input_ids), out.tolist()))
        return out.astype(np.intc)


class PromptLookupDraft(LlamaDraftModel):
    """llama-cpp-python's own prompt-lookup drafting (LlamaPromptLookupDecoding: the continuation of
    the latest earlier match of the last 1..max_ngram tokens, up to k tokens; none when nothing
    matches), logged like GGUFDraftModel so acceptance is counted the same way."""

    def __init__(self, k=4, max_ngram_size=2):
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self.k, self.max_ngram_size, self.log = k, max_ngram_size, []
        self._find = LlamaPromptLookupDecoding.find_candidate_pred_tokens

    def prime(self, ids):
        pass  # nothing to precompute: it reads the ids it is given

    def __call__(self, input_ids, /, **kwargs):
        out = self._find(np.asarray(input_ids, dtype=np.intc), self.max_ngram_size, self.k)
        if len(out):
            self.log.append((len(input_ids), [int(t) for t in out]))
        return np.asarray(out, dtype=np.intc)


class LlamaCppRunner:
    """Greedy (temperature 0, top_k 1) or sampled generation through Llama.generate, timed from
    the call to the last token kept; the prompt (all but its last token) is evaluated in prime()."""

    def __init__(self, llm, n_predict, temp=0.0, seed=0, draft=None, k=None):
        import llama_cpp

        self.llm, self.n_predict, self.temp, self.seed, self.draft, self.k = llm, n_predict, temp, seed, draft, k
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.is_eog = lambda t: bool(llama_cpp.llama_vocab_is_eog(vocab, t))

    def prime(self, ids):
        # All logits are only needed while verifying drafts; the prompt needs none (Llama.generate
        # samples from the context's logits, not from llm.scores).
        keep_all, self.llm._logits_all = self.llm._logits_all, False
        try:
            if len(ids) > 1:
                sync_cache(self.llm, ids[:-1], need_logits=False)
            else:
                self.llm.reset()
        finally:
            self.llm._logits_all = keep_all
        if self.draft is not None:
            self.draft.prime(ids)

    def run(self, ids) -> Measure:
        llm = self.llm
        llm.draft_model = self.draft
        if self.draft is not None:
            self.draft.k = self.k
            self.draft.log = []
        llm.set_seed(self.seed)
        sampling = dict(temp=0.0, top_k=1) if self.temp == 0 else dict(temp=self.temp, top_k=0, top_p=1.0, min_p=0.0)
        out, eog = [], []
        t0 = time.perf_counter()
        gen = llm.generate(list(ids), repeat_penalty=1.0, typical_p=1.0, **sampling)
        for t in gen:
            if self.is_eog(t):
                eog = [int(t)]
                break
            out.append(int(t))
            if len(out) >= self.n_predict:
                break
        t_ms = 1000.0 * (time.perf_counter() - t0)
        gen.close()
        m = Measure(tokens=out, t_ms=t_ms, stop_reason="eos" if eog else "length")
        if self.draft is None:
            m.n_steps, m.n_accepted = len(out) + len(eog), 0
        else:
            self._count_acceptance(m, list(ids) + out + eog)  # a drafted EOS the target agreed with counts
        return m

    def _count_acceptance(self, m: Measure, full):
        # Each logged draft was verified in the target step that followed it; one step before the
        # first draft had none. Positions past the tokens we kept were never judged.
        drafted, accepted = [0] * self.k, [0] * self.k
        n_acc = n_drafted = 0
        for pos, d in self.draft.log:
            judged = min(len(d), len(full) - pos)
            a = common_prefix(d[:judged], full[pos:pos + judged])
            for i in range(judged):
                drafted[i] += 1
                accepted[i] += i < a
            n_drafted += judged
            n_acc += a
        m.n_steps, m.n_drafted, m.n_accepted = 1 + len(self.draft.log), n_drafted, n_acc
        m.drafted_at, m.accepted_at = drafted, accepted
