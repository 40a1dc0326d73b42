"""ppow_convert: HF Llama checkpoints and trained ppow drafters -> GGUF files llama.cpp loads, and
ppow's feature drafters in and out of the Hugging Face EAGLE-3 layout (hf_eagle3.py).

Pure numpy + gguf: no torch, and only safetensors are read (never pickle).
"""
from .errors import ConvertError
from .hf_llama import convert_hf
from .drafter import convert_drafter
from .hf_eagle3 import export_hf_eagle3, import_hf_eagle3

__all__ = ["ConvertError", "convert_hf", "convert_drafter", "export_hf_eagle3", "import_hf_eagle3"]
