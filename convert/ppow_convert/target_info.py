"""What a feature drafter must fit in its target: vocabulary, hidden size, layer count, and the
target's token embedding rows (a feature drafter borrows them; an imported checkpoint's own copy is
compared against them)."""
from dataclasses import dataclass
from typing import Callable

import numpy as np
import gguf

from .eagle3 import target_params
from .errors import ConvertError
from .gguf_io import open_gguf


@dataclass
class TargetInfo:
    where: str  # a name for messages
    n_vocab: int
    n_embd: int
    n_layer: int | None
    embed_rows: Callable | None  # ids -> float32 [len(ids), n_embd], unscaled

    @classmethod
    def from_gguf(cls, path):
        reader = open_gguf(path)
        n_vocab, n_embd, n_layer = target_params(reader, path)
        t = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        if t is not None and [int(x) for x in t.shape] != [n_embd, n_vocab]:
            raise ConvertError(f"{path}: token_embd.weight has shape {list(t.shape)}, expected [{n_embd}, {n_vocab}]")

        def rows(ids):  # the rows only: a 262k-row matrix need not be dequantized whole
            data = np.asarray(t.data)[np.asarray(ids)]
            return np.asarray(gguf.quants.dequantize(data, t.tensor_type), dtype=np.float32).reshape(len(ids), n_embd)

        return cls(path, n_vocab, n_embd, n_layer, rows if t is not None else None)
