"""Trained ppow drafter (HF Llama layout, safetensors) -> GGUF that pairs with a target GGUF.

Full-vocab drafter: every tokenizer.* KV is copied from the target GGUF, so llama.cpp sees
exactly the target's vocabulary and token ids mean the same thing in both models.

Reduced draft vocabulary (draft_vocab.safetensors with d2t[draft index] = target token id):
llama.cpp's llama architecture creates token_embd and output with the same {n_embd, n_vocab}
shape (shape checked at load) and sizes every logits buffer by the tokenizer's token count,
so a GGUF with the full target tokenizer and a smaller output layer cannot load (and a smaller
`llama.vocab_size` with the full token list would read past the output tensor). We therefore
write a self-consistent small-vocab model: `llama.vocab_size` = len(d2t), no tokenizer
(tokenizer.ggml.model = "none": llama.cpp creates len(d2t) placeholder tokens), and the map in
the KV array `ppow.draft_vocab.d2t` (int32). The ppow runtime feeds draft ids (target ids
mapped through the inverse of d2t) and maps the len(d2t) logits back to target ids with d2t;
`ppow.target.n_vocab` records the target vocabulary size for a pairing check.

Feature drafters (EAGLE-3, config model_type "ppow_eagle3") become llama.cpp `eagle3` GGUFs: eagle3.py.
"""
import os

import numpy as np
import gguf
from ppow.gguf_keys import DRAFT_VOCAB_D2T as KEY_D2T
from ppow.gguf_keys import DRAFT_VOCAB_UNK as KEY_UNK
from ppow.gguf_keys import TARGET_N_VOCAB as KEY_TARGET_N_VOCAB

from .eagle3 import convert_eagle3, is_feature_drafter, read_drafter_weights
from .errors import ConvertError
from .gguf_io import OUTTYPES, add_weight, open_gguf, write_gguf
from .hf_llama import add_llama_params, llama_tensors, load_config
from .safetensors_io import read_file
from .tokenizer import copy_tokenizer, token_count

D2T_FILE = "draft_vocab.safetensors"


def load_d2t(ckpt_dir, n_target):
    """(d2t, unk_draft_id): the draft->target id map, validated, and the draft id that stands for
    target tokens outside it; (None, None) when the drafter uses the full target vocab."""
    path = os.path.join(ckpt_dir, D2T_FILE)
    if not os.path.isfile(path):
        return None, None
    tensors = read_file(path)
    d2t = tensors.get("d2t")
    if d2t is None or d2t.ndim != 1 or d2t.dtype.kind != "i":
        raise ConvertError(f"{path} must hold a 1-D integer tensor 'd2t'")
    d2t = np.asarray(d2t, dtype=np.int64)
    if len(d2t) == 0:
        raise ConvertError(f"{path}: d2t is empty")
    if d2t.min() < 0 or d2t.max() >= n_target:
        raise ConvertError(f"{path}: d2t has ids outside the target vocabulary [0, {n_target})")
    if len(np.unique(d2t)) != len(d2t):
        raise ConvertError(f"{path}: d2t maps two draft entries to the same target token")
    unk = tensors.get("unk_draft_id", np.zeros(1, np.int64))
    if unk.size != 1 or unk.dtype.kind not in "iu":
        raise ConvertError(f"{path}: unk_draft_id must be one integer, got {unk.dtype} {list(unk.shape)}")
    unk = int(unk.reshape(-1)[0])
    if not 0 <= unk < len(d2t):
        raise ConvertError(f"{path}: unk_draft_id {unk} is outside the draft vocabulary [0, {len(d2t)})")
    return d2t.astype(np.int32), unk


def convert_drafter(ckpt_dir, target_gguf, out_path, outtype="f16", fc_type="f32"):
    """Convert a drafter checkpoint, taking its tokenizer from target_gguf (fc_type: feature drafters)."""
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown outtype {outtype!r} (choose from {', '.join(OUTTYPES)})")
    if not os.path.isdir(ckpt_dir):
        raise ConvertError(f"{ckpt_dir}: not a directory")
    if is_feature_drafter(ckpt_dir):
        return convert_eagle3(ckpt_dir, target_gguf, out_path, outtype, fc_type)
    cfg = load_config(ckpt_dir)
    reader = open_gguf(target_gguf)
    n_target = token_count(reader, target_gguf)
    d2t, unk = load_d2t(ckpt_dir, n_target)
    if d2t is None and cfg["vocab_size"] != n_target:
        raise ConvertError(f"vocab size mismatch: drafter vocab_size={cfg['vocab_size']} but the target "
                           f"tokenizer in {target_gguf} has {n_target} tokens")
    if d2t is not None and cfg["vocab_size"] != len(d2t):
        raise ConvertError(f"vocab size mismatch: drafter vocab_size={cfg['vocab_size']} but "
                           f"{D2T_FILE} maps {len(d2t)} draft tokens")
    tensors = llama_tensors(read_drafter_weights(ckpt_dir), cfg, ckpt_dir)

    def fill(w):
        w.add_name(os.path.basename(os.path.normpath(ckpt_dir)))
        add_llama_params(w, cfg, outtype)
        if d2t is None:
            copy_tokenizer(w, reader)
        else:
            w.add_tokenizer_model("none")
            w.add_key_value(KEY_D2T, d2t.tolist(), gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)
            w.add_int32(KEY_UNK, unk)
        w.add_uint32(KEY_TARGET_N_VOCAB, n_target)
        for name, t in tensors:
            add_weight(w, name, t, outtype)

    return write_gguf(out_path, "llama", fill)
