"""The embedded default: Gemma 3 270M with the drafters shipped inside the package."""
import json
import os
import subprocess
import sys

import pytest

import ppow
from ppow.models import shipped_drafters

pytestmark = pytest.mark.real


def test_shipped_drafters_exist_and_fit_the_budget():
    names = shipped_drafters()
    assert {"gemma3-270m-kd", "gemma3-270m-ppow"} <= set(names)
    total = sum(os.path.getsize(ppow.default_drafter(n)) for n in ("kd", "ppow"))
    assert total <= 40 * 2**20, total
    for n in ("kd", "ppow"):  # each ships with its model card
        assert os.path.isfile(ppow.default_drafter(n)[: -len(".gguf")] + ".md")
    every = [ppow.default_drafter(n.split("-")[-1], target=n.rsplit("-", 1)[0]) for n in names]
    assert sum(map(os.path.getsize, every)) <= 60 * 2**20  # all targets' drafters in the package
    assert all(os.path.isfile(p[: -len(".gguf")] + ".md") for p in every)
    with pytest.raises(ppow.PpowError, match="no shipped drafter named 'eagle'"):
        ppow.default_drafter("eagle")


@pytest.mark.parametrize("name", ["kd", "ppow"])
def test_shipped_drafter_is_lossless_and_accepted(name):
    prompts = ["Question: What are three simple ways to save energy at home?\nAnswer:",
               "Question: Write a Python function that reverses a string.\nAnswer:"]
    with ppow.Generator(ppow.default_target(), ppow.default_drafter(name), n_ctx=512, n_threads=1) as g:
        # both are EAGLE-3 feature drafters (the standalone kind is tested on tiny models)
        assert g.drafter_kind == "feature"
        accepted = 0
        for p in prompts:
            ref = g.generate(p, n_predict=32, use_drafter=False, ignore_eos=True)
            out = g.generate(p, n_predict=32, draft_max=3, ignore_eos=True)
            assert out.tokens == ref.tokens
            accepted += out.stats.n_accepted
        assert accepted > 0  # a trained drafter, not noise: some drafts are accepted


def test_ppow_run_default_uses_the_shipped_ppow_drafter():
    # No model flags: Gemma 3 270M target, shipped PPOW drafter, default prompt.
    cmd = [sys.executable, "-m", "ppow.cli.run", "-n", "16", "--json", "-t", "1",
           "--draft-policy", "fixed", "--draft-max", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_drafted"] > 0 and out["prompt_tokens"] > 0 and len(out["tokens"]) > 0
