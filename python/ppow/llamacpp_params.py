"""Loading a model through llama-cpp-python the way ppow loads it: without repacked CPU weights.

Repacked weight layouts switch matmul kernels with the batch size (and the AMX buffer type crashed on a
Xeon), so the bench's llama-cpp-python peers, the trainer's llama-cpp-python target and the tests all
load with `model_params(False)`. Torch-free, below the bench and the trainer.
"""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def model_params(repack: bool):
    """Within the block, llama_cpp.Llama(...) loads with use_extra_bufts = repack."""
    # Llama() exposes no use_extra_bufts argument; it fills its model params from
    # llama_model_default_params() while loading, so adjust what that returns for the load.
    import llama_cpp.llama_cpp as C

    orig = C.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = repack
        return p

    C.llama_model_default_params = params
    try:
        yield
    finally:
        C.llama_model_default_params = orig
