"""The on-disk pieces of a target cache that the data engine writes: names, the resume scan, atomic JSON,
shard tensors, the target's identity. Torch-free on purpose: `ppow-train data` and `ppow-train prompts`
run the engine (ppow._core) without importing torch, so they also run where a CUDA build of ppow and
torch cannot yet share a process (issue 22); cache.py (the torch reader) builds on these names.
"""
import hashlib
import json
import os
import struct

import numpy as np

META = "meta.json"


class TargetMismatch(ValueError):
    pass


class NonFiniteError(RuntimeError):
    """A training step produced NaN/inf (common.py raises it; defined here so the CLI can catch it
    without importing torch)."""


def shard_name(i):
    return f"shard_{i:05d}"


def sha256_of(path, chunk=1 << 22):
    """Identity of a target: sha256 of a file, or of the (name, sha256) list of a directory's model files."""
    if os.path.isdir(path):
        h = hashlib.sha256()
        for name in sorted(os.listdir(path)):
            if name.endswith((".json", ".safetensors", ".bin", ".model", ".gguf", ".txt")):
                h.update(name.encode())
                h.update(sha256_of(os.path.join(path, name)).encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def atomic_json(obj, path):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def finished_shards(out_dir, remove_tmp=False):
    """(number, side json) of every completely written shard of an engine cache (datagen.py writes the
    .safetensors, then the .json); remove_tmp (a writer resuming) deletes the temporary files a killed
    run left."""
    done = []
    for name in sorted(os.listdir(out_dir)):
        if name.endswith(".tmp"):
            if remove_tmp:
                os.remove(os.path.join(out_dir, name))
        elif name.startswith("shard_") and name.endswith(".json"):
            st = os.path.join(out_dir, name[:-5] + ".safetensors")
            if os.path.exists(st):
                with open(os.path.join(out_dir, name)) as f:
                    done.append((int(name[6:11]), json.load(f)))
    return done


_DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64",
                np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8"}


def write_safetensors(path, tensors):
    """name -> numpy array, or ("BF16", uint16 bit patterns), as one safetensors file (what
    safetensors.torch.load_file reads back, bf16 included; numpy has no bf16, hence the bit patterns)."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        dtype, a = (a[0], np.ascontiguousarray(a[1], dtype=np.uint16)) if isinstance(a, tuple) else (
            _DTYPE_NAMES[np.dtype(a.dtype)], np.ascontiguousarray(a))
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": [int(d) for d in a.shape], "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for data in blobs:
            f.write(data)
