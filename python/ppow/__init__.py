"""ppow: fast local LLM generation with learned drafters (speculative decoding over llama.cpp)."""
from ppow.errors import PpowError
from ppow.generator import Generation, Generator, Stats
from ppow.models import default_drafter, default_target


def build_info() -> dict:
    """The llama.cpp build ppow._core links: backends and devices compiled in, CPU features."""
    from ppow import _core
    import importlib.metadata as md

    info = dict(_core.build_info())
    info["llama_cpp_python"] = md.version("llama-cpp-python")
    return info


__all__ = ["Generator", "Generation", "Stats", "PpowError", "default_target", "default_drafter", "build_info"]
__version__ = "0.1.0"
