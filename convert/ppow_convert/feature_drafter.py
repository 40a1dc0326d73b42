"""A feature (EAGLE-3) drafter in memory, whichever file it came from.

FeatureDrafter(name, cfg, tensors, d2t):
- cfg: the trainer's config keys (eagle3.CONFIG_KEYS, norm_before_residual, norm_before_fc);
- tensors: float32 arrays under the trainer's checkpoint names (fc.weight, input_norm.weight,
  midlayer.*, norm.weight, lm_head.weight), q/k rows for adjacent-pair RoPE (llama.cpp's layout);
- d2t: absolute target ids of the draft rows (int64), None for a full-vocabulary head.

Read here from a trainer checkpoint dir (ppow-train --drafter-kind feature) or an eagle3 GGUF (a
shipped drafter; quantized matrices are dequantized, so a q8_0 GGUF gives exactly its q8_0 values).
The Hugging Face EAGLE-3 layout is read and written in hf_eagle3.py.
"""
import os
from dataclasses import dataclass

import numpy as np
import gguf

from .eagle3 import LAYER, eagle3_tensors, is_feature_drafter, load_config, load_d2t, read_drafter_weights, check_d2t
from .errors import ConvertError
from .gguf_io import open_gguf

# eagle3 GGUF tensor name -> trainer checkpoint name
GGUF_TO_CKPT = {"fc.weight": "fc.weight", "enc.output_norm.weight": "input_norm.weight",
                "output_norm.weight": "norm.weight", "output.weight": "lm_head.weight",
                **{f"blk.0.{v}.weight": f"{k}.weight" for k, v in LAYER.items()}}


@dataclass
class FeatureDrafter:
    name: str
    cfg: dict
    tensors: dict
    d2t: np.ndarray | None

    def checked_tensors(self, where):
        """(gguf name, array, keep_f32) as eagle3.py writes them, after its name/shape/finite checks."""
        return eagle3_tensors(self.tensors, self.cfg, where)


def from_checkpoint(ckpt_dir):
    cfg = load_config(ckpt_dir)
    d2t = load_d2t(ckpt_dir, cfg["draft_vocab_size"], cfg["target_vocab_size"])
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in read_drafter_weights(ckpt_dir).items()}
    d = FeatureDrafter(os.path.basename(os.path.normpath(ckpt_dir)), cfg, tensors, d2t)
    d.checked_tensors(ckpt_dir)
    return d


def _fields(reader, path):
    def get(key, default=None, kind=int):
        f = reader.fields.get(f"eagle3.{key}")
        if f is None:
            if default is None:
                raise ConvertError(f"{path} has no eagle3.{key}: not an eagle3 drafter GGUF")
            return default
        v = f.contents()
        if kind is list:
            return [int(x) for x in v]
        if isinstance(v, (list, str)):
            raise ConvertError(f"{path}: eagle3.{key} must be a number, got {v!r}")
        if kind is float:  # GGUF stores float32: its shortest decimal (1e-05, not 9.9999997e-06)
            return float(str(np.float32(v)))
        return kind(v)
    return get


def dequantized(t):
    """A GGUF tensor as float32 in numpy's (row-major, GGUF shape reversed) order."""
    a = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    return a.reshape([int(x) for x in reversed(t.shape)])


def from_gguf(path):
    reader = open_gguf(path)
    arch = reader.fields.get("general.architecture")
    arch = arch.contents() if arch is not None else None
    if arch != "eagle3":
        raise ConvertError(f"{path} is a {arch!r} GGUF, not an eagle3 feature drafter")
    get = _fields(reader, path)
    H, nh = get("embedding_length"), get("attention.head_count")
    hd = get("attention.key_length", H // nh)
    if get("attention.value_length", hd) != hd:
        raise ConvertError(f"{path}: key and value head sizes differ (the EAGLE-3 layer has one head size)")
    if get("block_count") != 1:
        raise ConvertError(f"{path}: an eagle3 drafter has exactly one decoder layer")
    if reader.fields.get("eagle3.rope.scaling.type") is not None:
        raise ConvertError(f"{path} uses RoPE scaling, which ppow's feature drafters do not have")
    cfg = dict(hidden_size=H, target_hidden_size=get("target_hidden_size"), target_layers=get("target_layers", kind=list),
               target_vocab_size=get("vocab_size"), intermediate_size=get("feed_forward_length"),
               num_hidden_layers=1, num_attention_heads=nh, num_key_value_heads=get("attention.head_count_kv", nh),
               head_dim=hd, rms_norm_eps=get("attention.layer_norm_rms_epsilon", kind=float),
               rope_theta=get("rope.freq_base", 10000.0, float), max_position_embeddings=get("context_length", 8192),
               norm_before_residual=bool(get("norm_before_residual", False, bool)),
               norm_before_fc=bool(get("norm_before_fc", False, bool)))
    tensors, d2t = {}, None
    for t in reader.tensors:
        if t.name == "d2t":
            if t.tensor_type != gguf.GGMLQuantizationType.I64:
                raise ConvertError(f"{path}: d2t must be I64, is {t.tensor_type.name}")
            d2t = np.asarray(t.data, dtype=np.int64).reshape(-1)
        elif t.name == "token_embd.weight":
            raise ConvertError(f"{path} carries its own token_embd: ppow's feature drafters borrow the target's")
        elif t.name in GGUF_TO_CKPT:
            tensors[GGUF_TO_CKPT[t.name]] = dequantized(t)
        else:
            raise ConvertError(f"{path}: unexpected tensor {t.name!r} in an eagle3 drafter (rope_freqs: RoPE scaling)")
    if "lm_head.weight" not in tensors:
        raise ConvertError(f"{path} has no output.weight (it borrows the target's head): nothing to export as lm_head")
    cfg["draft_vocab_size"] = len(tensors["lm_head.weight"])
    if d2t is not None:
        d2t = check_d2t(d2t, cfg["draft_vocab_size"], cfg["target_vocab_size"], path)
    elif cfg["draft_vocab_size"] != cfg["target_vocab_size"]:
        raise ConvertError(f"{path}: {cfg['draft_vocab_size']} output rows for {cfg['target_vocab_size']} target tokens "
                           "and no d2t")
    name = reader.fields.get("general.name")
    d = FeatureDrafter(name.contents() if name is not None else os.path.basename(path), cfg, tensors, d2t)
    d.checked_tensors(path)
    return d


def load(src):
    """A feature drafter from a trainer checkpoint dir or an eagle3 GGUF file."""
    if os.path.isdir(src):
        if not is_feature_drafter(src):
            raise ConvertError(f"{src} is not a feature drafter checkpoint (config.json model_type 'ppow_eagle3'): "
                               "only feature drafters have an EAGLE-3 layout")
        return from_checkpoint(src)
    if os.path.isfile(src):
        return from_gguf(src)
    raise ConvertError(f"{src}: no such file or directory")
