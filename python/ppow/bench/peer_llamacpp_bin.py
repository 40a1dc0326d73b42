"""llama.cpp's own speculative runtime as a peer: its `llama-speculative-simple` binary.

The binary comes from the llama-cpp-python 0.3.36 sdist's vendor/llama.cpp (CI never builds it):

    pip download --no-deps --no-build-isolation --no-binary llama-cpp-python llama-cpp-python==0.3.36
    tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_OPENSSL=OFF
    cmake --build build -j2 --target llama-speculative-simple llama-bench

then `ppow-bench --llama-cpp-bin .../build/bin`. Each run starts the binary on one prompt (text,
as the binary reads it) with `--spec-type draft-eagle3` for a feature drafter or `draft-simple`
for a token drafter, `--spec-draft-n-max k --spec-draft-n-min 0 --spec-draft-p-min 0` (a fixed
window, as ppow's), the bench's threads and `--no-repack` (the weight layout ppow loads;
llama.cpp 0.3.36's AMX buffer type crashed at depth on a Sapphire Rapids Xeon). Speed is the
binary's own decode-loop figure ("decoded N tokens in T seconds": prompt and model load excluded).
The binary prints text only, so its output is compared with its baseline as text (both sides
re-tokenized with the target's tokenizer) over their common length: it may decode a few tokens
past -n.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile

from ppow.bench.runners import Measure

BINARY = "llama-speculative-simple"


class LlamaCppBinError(RuntimeError):
    pass


def spec_type(drafter_path) -> str:
    from ppow.gguf_keys import is_feature_drafter

    return "draft-eagle3" if is_feature_drafter(drafter_path) else "draft-simple"


# How every run calls the binary, for the report's notes.
NOTE = (f"{BINARY} --spec-type draft-eagle3|draft-simple --spec-draft-n-max k --spec-draft-n-min 0 "
        "--spec-draft-p-min 0 --no-repack -ngl/-ngld as the bench's, one process per run")


def speculative_simple(bin_dir, target, drafter, spec, prompt_text, n, k, threads, n_ctx, n_gpu_layers=0,
                       n_gpu_layers_draft=0) -> dict:
    """One greedy run of llama-speculative-simple (`spec`: spec_type(drafter)); its text, decode time
    and draft counts."""
    args = ["-m", target, "-md", drafter, "--spec-type", spec, "--spec-draft-n-max", str(k),
            "--spec-draft-n-min", "0", "--spec-draft-p-min", "0", "-n", str(n), "-t", str(threads),
            "-td", str(threads), "--no-repack", "--temp", "0", "-c", str(n_ctx),
            "-ngl", str(n_gpu_layers), "-ngld", str(n_gpu_layers_draft)]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(prompt_text)
        path = f.name
    try:
        res = subprocess.run([os.path.join(bin_dir, BINARY), *args, "-f", path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    decoded = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds", res.stderr)
    drafted = re.search(r"n_drafted = (\d+)", res.stderr)
    accepted = re.search(r"n_accept\s+= (\d+)", res.stderr)
    if res.returncode != 0 or not (decoded and drafted and accepted):
        raise LlamaCppBinError(f"{BINARY} failed (exit code {res.returncode}): "
                               f"{res.stderr.strip().splitlines()[-1] if res.stderr.strip() else 'no output'}")
    n_dec, secs = int(decoded.group(1)), float(decoded.group(2))
    n_acc = int(accepted.group(1))
    text = res.stdout.split(prompt_text, 1)[-1].strip()  # the binary echoes the prompt, then the output
    return {"seconds": secs, "n_generated": n_dec, "n_drafted": int(drafted.group(1)), "n_accepted": n_acc,
            "text": text}


class SpeculativeSimpleRunner:
    """A bench runner over the binary. `text_of` maps a prompt's token ids (as a tuple) to the text
    the binary reads; `retokenize` turns output text into target token ids for the output check."""

    def __init__(self, bin_dir, target, drafter, k, n_predict, threads, n_ctx, text_of, retokenize, n_gpu_layers=0,
                 n_gpu_layers_draft=0):
        self.call = dict(bin_dir=bin_dir, target=target, drafter=drafter, spec=spec_type(drafter), n=n_predict, k=k,
                         threads=threads, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers,
                         n_gpu_layers_draft=n_gpu_layers_draft)  # the drafter's kind read once, not per run
        self.text_of, self.retokenize = text_of, retokenize

    needs_warm_up = False  # a fresh process per run: nothing stays warm (the bench probes it once instead)

    def prime(self, ids):
        pass  # its time excludes the prompt

    def run(self, ids) -> Measure:
        r = speculative_simple(prompt_text=self.text_of[tuple(ids)], **self.call)
        # tokens committed per target step: every step commits its accepted drafts plus one token
        return Measure(tokens=self.retokenize(r["text"]), t_ms=1000.0 * r["seconds"], n_decoded=r["n_generated"],
                       n_steps=r["n_generated"] - r["n_accepted"], n_drafted=r["n_drafted"],
                       n_accepted=r["n_accepted"])


class RetokenizedRunner:
    """A ppow runner whose output tokens are detokenized and re-tokenized, so that its output can be
    compared with the binary's (text only) on the same footing."""

    def __init__(self, inner, retokenize, detokenize):
        self.inner, self.retokenize, self.detokenize = inner, retokenize, detokenize

    def prime(self, ids):
        self.inner.prime(ids)

    def run(self, ids) -> Measure:
        m = self.inner.run(ids)
        m.n_decoded = m.n_generated
        m.tokens = self.retokenize(self.detokenize(m.tokens).strip())
        return m
