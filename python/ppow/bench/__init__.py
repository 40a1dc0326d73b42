"""ppow-bench: measure ppow's speculative decoding (speedup, τ, acceptance) against plain decoding
and peers on Spec-Bench prompts. Entry point: ppow.bench.cli:main."""
