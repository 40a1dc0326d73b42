"""Minimal safetensors reader on numpy memmaps.

Why not safetensors.numpy: it cannot represent bf16 (most HF checkpoints) and we want no
torch dependency. The format is tiny: u64 header size, JSON header, raw little-endian data.
Pickle (.bin/.pt) checkpoints are refused: loading them can execute arbitrary code.
"""
import glob
import json
import os
import struct

import numpy as np

from .errors import ConvertError

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8}


def read_file(path):
    """name -> numpy array (bf16 widened to f32), memory-mapped where possible."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        mm = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError, struct.error) as e:
        raise ConvertError(f"unreadable safetensors file {path}: {e}") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ConvertError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        b, e = info["data_offsets"]
        if 8 + n + e > len(mm):
            raise ConvertError(f"unreadable safetensors file {path}: tensor {name!r} runs past the end of the file")
        a = mm[8 + n + b: 8 + n + e].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a
    return out


def read_dir(model_dir, pattern="*.safetensors", exclude=()):
    """All tensors of a (possibly sharded) checkpoint directory."""
    files = sorted(f for f in glob.glob(os.path.join(model_dir, pattern)) if os.path.basename(f) not in exclude)
    if not files:
        pickles = glob.glob(os.path.join(model_dir, "*.bin")) + glob.glob(os.path.join(model_dir, "*.pt"))
        if pickles:
            raise ConvertError(f"{model_dir} has only pickle weights ({os.path.basename(pickles[0])}); "
                               "ppow-convert reads safetensors only (re-save with safe_serialization=True)")
        raise ConvertError(f"no *.safetensors weights in {model_dir}")
    tensors = {}
    for f in files:
        tensors.update(read_file(f))
    return tensors
