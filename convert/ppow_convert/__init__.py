"""ppow_convert: HF Llama checkpoints and trained ppow drafters -> GGUF files llama.cpp loads.

Pure numpy + gguf: no torch, and only safetensors are read (never pickle).
"""
from .errors import ConvertError
from .hf_llama import convert_hf
from .drafter import convert_drafter

__all__ = ["ConvertError", "convert_hf", "convert_drafter"]
