"""Minimal safetensors reader (numpy memmaps) and writer.

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
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _is_size(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_file(path):
    """name -> numpy array (bf16 widened to f32), memory-mapped where possible.

    The header comes from the file's author: every entry is checked (dtype, shape, offsets inside the
    file, size = shape x dtype) before any array is made from it."""
    def bad(why):
        return ConvertError(f"unreadable safetensors file {path}: {why}")

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise bad(f"header of {n} bytes in a file of {size} bytes")
            header = json.loads(f.read(n))
        mm = np.memmap(path, dtype=np.uint8, mode="r") if size > 8 + n else np.zeros(0, np.uint8)
    except (OSError, ValueError, struct.error) as e:
        raise bad(e) from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise bad(f"tensor {name!r}: header entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _DTYPES:
            raise ConvertError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        if not isinstance(shape, list) or not all(_is_size(d) for d in shape):
            raise bad(f"tensor {name!r} has shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_size(o) for o in offsets)
                and offsets[0] <= offsets[1]):
            raise bad(f"tensor {name!r} has data_offsets {offsets!r}")
        b, e = offsets
        if 8 + n + e > len(mm):
            raise bad(f"tensor {name!r} runs past the end of the file")
        if e - b != int(np.prod(shape, dtype=object)) * _ITEMSIZE[dtype]:
            raise bad(f"tensor {name!r}: {e - b} bytes for shape {shape} of {dtype}")
        a = mm[8 + n + b: 8 + n + e]
        if dtype == "BOOL" and a.size and a.max() > 1:
            raise bad(f"tensor {name!r}: BOOL bytes other than 0 and 1")
        a = a.view(_DTYPES[dtype]).reshape(shape)
        if dtype == "BF16":
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


_WRITE_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "BOOL": np.bool_}


def to_bf16_bits(a):
    """float32 -> bf16 bit patterns (uint16), rounding to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(a), np.uint16(0x7FC0), rounded)


def write_file(path, tensors, metadata=None):
    """Write name -> (dtype name, array) as one safetensors file (F32, F16, BF16, I64, BOOL).
    Arrays are cast to the dtype (BF16 from float32 with round-to-nearest-even). The caller makes
    the file atomic (this writes `path` directly)."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, a) in tensors.items():
        raw = to_bf16_bits(a) if dtype == "BF16" else np.ascontiguousarray(a, dtype=_WRITE_DTYPES[dtype])
        data = raw.astype(raw.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": [int(d) for d in np.shape(a)], "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data start stays 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for data in blobs:
            f.write(data)
