"""Peer: Hugging Face transformers assisted generation (`generate(..., assistant_model=...)`).

The target is the same GGUF, dequantised by transformers (`from_pretrained(dir, gguf_file=...)`,
float32, slow on CPU); the assistant is the PyTorch drafter from a trainer checkpoint directory.
transformers' generate() offers no way to process the prompt beforehand, so HF times are the
whole generate() call, prompt included, for HF plain and HF assisted alike; HF speedups are
therefore relative to HF plain only. τ is tokens per target forward pass (counted with a hook);
acceptance by position is not exposed by transformers and is not reported for HF.
"""
from __future__ import annotations

import os
import time

from ppow.bench.runners import Measure

D2T_FILE = "draft_vocab.safetensors"


def load_target(path):
    """An HF model from a GGUF file (dequantised) or an HF checkpoint directory."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # keeps per-call deprecation notices out of the progress bar
    hf_logging.disable_progress_bar()

    if os.path.isdir(path):
        model = AutoModelForCausalLM.from_pretrained(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                                     gguf_file=os.path.basename(path))
    return model.eval()


def load_drafter(ckpt_dir, target):
    """The PyTorch drafter, or raise ValueError saying why HF assisted generation cannot use it."""
    from transformers import AutoModelForCausalLM

    if os.path.isfile(os.path.join(ckpt_dir, D2T_FILE)):
        raise ValueError("reduced draft vocabulary (draft_vocab.safetensors): HF assisted generation needs the "
                         "drafter to share the target's vocabulary")
    model = AutoModelForCausalLM.from_pretrained(ckpt_dir).eval()
    nt = target.get_output_embeddings().weight.shape[0]
    nd = model.get_output_embeddings().weight.shape[0]
    if nt != nd:
        raise ValueError(f"drafter vocabulary ({nd}) differs from the target's ({nt}); HF assisted generation "
                         f"needs a shared vocabulary")
    return model


def eos_ids(model) -> set:
    e = model.generation_config.eos_token_id
    if e is None:
        e = model.config.eos_token_id
    if e is None:
        return set()
    return set(e) if isinstance(e, (list, tuple)) else {int(e)}


class HFRunner:
    """One HF system: plain (assistant=None), assisted with a constant window of k tokens, or
    assisted with transformers' default schedule (k=None: 20 tokens cut by a confidence threshold
    that adapts during the call)."""

    def __init__(self, model, n_predict, temp=0.0, seed=0, assistant=None, k=None):
        self.model, self.n_predict, self.temp, self.seed, self.assistant, self.k = model, n_predict, temp, seed, assistant, k
        self.eos = eos_ids(model)
        self._calls = 0
        model.register_forward_hook(self._count)

    def _count(self, *_):
        self._calls += 1

    def prime(self, ids):
        pass  # nothing to do ahead: generate() always processes the whole prompt

    def _configure_assistant(self):
        cfg = self.assistant.generation_config
        if self.k is None:  # transformers' defaults apply to unset fields
            cfg.num_assistant_tokens = cfg.num_assistant_tokens_schedule = cfg.assistant_confidence_threshold = None
        else:
            cfg.num_assistant_tokens, cfg.num_assistant_tokens_schedule = self.k, "constant"
            cfg.assistant_confidence_threshold = 0.0  # no early stop: exactly k candidates

    def run(self, ids) -> Measure:
        import torch

        x = torch.tensor([list(ids)], dtype=torch.long)
        kw = dict(max_new_tokens=self.n_predict, attention_mask=torch.ones_like(x),
                  pad_token_id=min(self.eos) if self.eos else 0)
        if self.temp > 0:
            kw.update(do_sample=True, temperature=self.temp, top_k=0, top_p=1.0)
        else:
            kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        if self.assistant is not None:
            self._configure_assistant()
            kw["assistant_model"] = self.assistant
        torch.manual_seed(self.seed)
        self._calls = 0
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(x, **kw)
        t_ms = 1000.0 * (time.perf_counter() - t0)
        toks = out[0, x.shape[1]:].tolist()
        stop = "length"
        for i, t in enumerate(toks):
            if t in self.eos:
                toks, stop = toks[:i], "eos"
                break
        return Measure(tokens=toks, t_ms=t_ms, n_steps=self._calls, stop_reason=stop)
