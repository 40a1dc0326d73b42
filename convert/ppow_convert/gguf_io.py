"""GGUF writing helpers: output types, atomic file creation, reading a target GGUF.

Output is written to OUT.tmp-<pid> next to OUT and moved into place with os.replace only
when complete, so a failed conversion never leaves a partial (loadable-looking) file.
"""
import os

import numpy as np
import gguf
from gguf.quants import quantize

from .errors import ConvertError

OUTTYPES = {  # name -> (file type, quant type for 2-D weights)
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}


def add_weight(writer, name, data, outtype):
    """Add a float tensor: 1-D (norms) stay f32; q8_0 falls back to f16 for rows not a multiple of 32."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    qtype = OUTTYPES[outtype][1]
    if data.ndim < 2:
        qtype = gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = gguf.GGMLQuantizationType.F16
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        writer.add_tensor(name, quantize(data, qtype))
    else:
        writer.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)


def write_gguf(out_path, arch, fill):
    """Create out_path atomically: fill(writer) adds KVs and tensors to a GGUFWriter."""
    out_path = os.path.abspath(out_path)
    if not os.path.isdir(os.path.dirname(out_path)):
        raise ConvertError(f"output directory {os.path.dirname(out_path)} does not exist")
    tmp = f"{out_path}.tmp-{os.getpid()}"
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        fill(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    finally:
        writer.close()
        if os.path.exists(tmp):
            os.remove(tmp)
    return out_path


def open_gguf(path):
    """GGUFReader with a clear error for missing / non-GGUF / truncated files."""
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/struct errors/IndexError on junk
        raise ConvertError(f"{path} is not a readable GGUF file ({e})") from None
