"""PPOW drafter training: target cache (data), token-level KD baseline, PPOW window-level RL, evaluation.

Entry point: `ppow-train` (ppow.train.cli:main). Modules: data (prompts, targets), cache (on-disk target
cache), vocab (reduced draft vocabulary), model (the Llama drafter), kd, ppow, rewards, windowing,
evaluate, checkpoint, loop (shared training loop), common.
"""
