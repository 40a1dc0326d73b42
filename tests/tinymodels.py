"""Tiny offline test models: tokenizers and Llama checkpoints built in seconds.

Tests must never download weights, so everything here is trained from a small
built-in corpus with fixed seeds:
- a byte-level BPE tokenizer (tokenizers library, wrapped as PreTrainedTokenizerFast),
- a SentencePiece tokenizer (sentencepiece library, Llama style, byte fallback),
- a 2-layer target Llama trained briefly so greedy continuations follow the corpus,
- a 1-layer drafter trained on the same text with fewer steps, so it agrees with the
  target often but not always (speculative decoding sees acceptances and rejections).
"""
import io
import json
import os
import random
import shutil

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()

CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog sleeps in the sun all day.
Once upon a time there was a little robot who wanted to learn how to paint.
Every morning the robot walked to the river and looked at the colors of the water.
The river was blue in the morning, green at noon and gold in the evening.
One day the robot met an old painter who lived in a small house by the bridge.
The painter said: to paint the river, you must first learn to see the light.
So the robot sat by the river for 7 days and 7 nights, watching the light change.
On the 8th day it painted a picture with 3 colors: blue, green and gold.
The painter smiled and said: now you know how to paint, little robot.
Numbers are fun: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10. Twenty plus 22 is 42.
def add(a, b):
    return a + b
print(add(2, 3))  # prints 5
Speculative decoding lets a small draft model guess the next tokens of a big model.
The big model checks all guesses at once and keeps the longest correct prefix.
When the draft model is right, many tokens are accepted in one step.
When the draft model is wrong, the big model corrects it and decoding continues.
Café, naïve, jalapeño and ümlaut are words with accents. Emoji: 🦊🐶!
"""

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in Llama


def corpus_lines():
    return [l for l in CORPUS.split("\n") if l.strip()]


# ----------------------------------------------------------------------------- tokenizers

def train_bpe_tokenizer(vocab_size=512):
    """Byte-level BPE (GPT-2 style pre-tokenizer) trained on CORPUS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2 regex
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_lines() * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   add_bos_token=False, add_eos_token=False)


def train_spm_tokenizer(out_dir, vocab_size=420):
    """Llama-style SentencePiece BPE model (unk=0, bos=1, eos=2, byte fallback) saved as tokenizer.model."""
    import sentencepiece as spm
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus_lines() * 4), model_writer=buf, vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, split_digits=True,
                                   num_threads=1, minloglevel=2)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(buf.getvalue())
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "add_bos_token": True, "add_eos_token": False}, f)
    return spm.SentencePieceProcessor(model_file=os.path.join(out_dir, "tokenizer.model"))


# ----------------------------------------------------------------------------- models

def llama_config(vocab_size, n_layer=2, tie=False, **kw):
    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layer,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
               rope_theta=10000.0, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)
    cfg.update(kw)
    return LlamaConfig(**cfg)


def train_lm(model, ids, steps, seed, seq=64, batch=16, lr=3e-3):
    """A few quick AdamW steps on random windows of `ids` (1-D LongTensor).

    Runs single-threaded: on small shared CPUs, multi-threaded torch on 64-wide matmuls
    is 4-30x slower (threads spin waiting for each other)."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_lm(model, ids, steps, seed, seq, batch, lr)
    finally:
        torch.set_num_threads(n_threads)


def _train_lm(model, ids, steps, seed, seq, batch, lr):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=g)
        x = torch.stack([ids[s:s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


def corpus_ids(tokenizer, n_copies=8, seed=0):
    """Corpus lines shuffled into a long stream of token ids."""
    rng = random.Random(seed)
    lines = corpus_lines() * n_copies
    rng.shuffle(lines)
    return torch.tensor(tokenizer("\n".join(lines), add_special_tokens=False)["input_ids"], dtype=torch.long)


def build_model(out_dir, tokenizer, n_layer=2, steps=150, seed=0, tie=False, ids=None):
    """Train a tiny Llama on CORPUS and save it (safetensors) with its tokenizer to out_dir."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(len(tokenizer), n_layer=n_layer, tie=tie))
    ids = corpus_ids(tokenizer) if ids is None else ids
    train_lm(model, ids, steps, seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


def build_target(out_dir, tokenizer=None):
    tokenizer = tokenizer or train_bpe_tokenizer()
    return build_model(out_dir, tokenizer, n_layer=2, steps=150, seed=0)


def build_drafter(out_dir, tokenizer):
    """A weaker 1-layer model on the same vocab: agrees with the target often, not always."""
    return build_model(out_dir, tokenizer, n_layer=1, steps=60, seed=1)


def build_spm_model(out_dir):
    """Tiny untrained Llama with a SentencePiece tokenizer (for converter tokenizer tests)."""
    sp = train_spm_tokenizer(out_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(sp.vocab_size(), n_layer=1))
    model.save_pretrained(out_dir)
    return sp


@torch.no_grad()
def greedy(model, ids, n):
    """Greedy continuation of a list of ids by n tokens (reference for GGUF tests)."""
    x = torch.tensor([ids])
    out = []
    for _ in range(n):
        nxt = int(model(input_ids=x).logits[0, -1].argmax())
        out.append(nxt)
        x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
    return out


def make_reduced_drafter(src, dst, d2t, unk=0):
    """Drafter checkpoint whose vocabulary is the target tokens d2t (rows sliced from src); target
    tokens outside d2t are fed to it as draft id `unk`."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["vocab_size"] = len(d2t)
    (dst / "config.json").write_text(json.dumps(cfg))
    t = {k: np.array(v) for k, v in load_file(str(dst / "model.safetensors")).items()}
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        t[k] = np.ascontiguousarray(t[k][d2t])
    save_file(t, str(dst / "model.safetensors"))
    save_file({"d2t": np.asarray(d2t, dtype=np.int64), "unk_draft_id": np.array([unk], dtype=np.int64)},
              str(dst / "draft_vocab.safetensors"))
