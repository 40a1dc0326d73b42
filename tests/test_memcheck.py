"""ppow._core under valgrind memcheck: no invalid reads/writes, no uses of uninitialised memory and
no definite leaks over a short session (load, greedy + sampled speculative generation, streaming,
context limit, error paths, load failures, close).

A small script runs in a subprocess under valgrind with PYTHONMALLOC=malloc (so every Python object
is a malloc block valgrind tracks). Noise from CPython, ld.so, libgomp and llama.cpp's static
objects is suppressed by tests/valgrind.supp; anything else fails the test, and errors whose stack
touches ppow or llama.cpp/ggml frames are listed first. Takes ~15-40 s on 2 busy cores.
"""
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SUPPRESSIONS = os.path.join(HERE, "valgrind.supp")
DONE = "memcheck-child: done"

CHILD = textwrap.dedent(f'''
    import gc
    import os
    import sys

    import ppow
    from ppow import PpowError, _core

    target, drafter, workdir = sys.argv[1:4]


    def expect(exc, fn, *args, **kw):
        try:
            fn(*args, **kw)
        except exc:
            return
        raise SystemExit(f"memcheck child: {{fn!r}}{{args}} did not raise {{exc.__name__}}")


    def model_params(path):
        mp = _core.ModelParams()
        mp.path, mp.n_ctx, mp.n_threads = path, 64, 1
        return mp


    with ppow.Generator(target, drafter, n_ctx=64, n_threads=1) as g:
        ref = g.generate("The quick brown fox", n_predict=16, ignore_eos=True, use_drafter=False)
        out = g.generate("The quick brown fox", n_predict=16, ignore_eos=True, draft_max=4)
        assert out.tokens == ref.tokens and out.stats.n_drafted > 0, (out.tokens, ref.tokens)
        s = g.generate("Once upon a time", n_predict=16, ignore_eos=True, draft_max=3,
                       temp=0.8, top_k=40, top_p=0.9, seed=7)
        assert len(s.tokens) == 16 and s.stats.n_drafted > 0
        g.generate("Once upon a time", n_predict=8, ignore_eos=True, draft_max=4, draft_policy="auto", draft_p_min=0.1)
        g.cost_profile(4)
        assert "".join(g.stream("hello", n_predict=6, ignore_eos=True)) != ""
        ids = g.tokenize("The quick brown fox jumps over the lazy dog. " * 8)[:60]
        c = g.generate(ids, n_predict=16, ignore_eos=True, draft_max=8)
        assert c.stats.stop_reason == "context", c.stats.stop_reason
        # Error paths inside the extension; the engine stays usable afterwards.
        expect(PpowError, g.generate, [10**7])
        expect(PpowError, g.generate, [1] * 100)
        expect(PpowError, g.detokenize, [-5])
        expect(ValueError, g.generate, "hi", top_p=0.0)
        gp = _core.GenParams()
        gp.draft_max = -1
        expect(_core.EngineError, g._engine.generate, [1, 2, 3], gp)
        assert g.generate("after the errors", n_predict=4, ignore_eos=True).stats.n_generated == 4

    # Load failures: missing file, not a GGUF, truncated GGUF, good target with a missing drafter.
    missing = os.path.join(workdir, "missing.gguf")
    expect(PpowError, ppow.Generator, missing)
    expect(_core.EngineError, _core.Engine, model_params(missing))
    junk = os.path.join(workdir, "junk.gguf")
    with open(junk, "w") as f:
        f.write("this is not a model")
    expect(_core.EngineError, _core.Engine, model_params(junk))
    trunc = os.path.join(workdir, "truncated.gguf")
    with open(target, "rb") as f, open(trunc, "wb") as o:
        data = f.read()
        o.write(data[: len(data) // 3])
    expect(_core.EngineError, _core.Engine, model_params(trunc))
    expect(_core.EngineError, _core.Engine, model_params(target), model_params(missing))
    del g, ref, out, s, c
    gc.collect()
    print("{DONE}", flush=True)
''')

ERROR_HEAD = re.compile(r"^(Invalid (read|write|free)|Mismatched free|Conditional jump|Use of uninitialised|"
                        r"Syscall param|Source and destination overlap|Argument '.*' of function|"
                        r".* bytes in .* blocks are definitely lost|Process terminating)")
# Frames of ppow itself (symbols, or the module's file when it has none) and of the llama.cpp it drives.
OWN_FRAMES = re.compile(r"_core\.cpython|ppow::|nanobind|\bnb::|libllama|libggml|\bllama_|\bggml_")


def valgrind_errors(log: str) -> list:
    """The error records of a valgrind log (one string each, '==pid==' prefixes removed)."""
    blocks, cur = [], None
    for line in log.splitlines():
        m = re.match(r"^==\d+== ?(.*)$", line)
        if not m:
            continue
        body = m.group(1)
        if cur is None:
            if ERROR_HEAD.match(body):
                cur = [body]
        elif body.strip():
            cur.append(body)
        else:
            blocks.append("\n".join(cur))
            cur = None
    if cur:
        blocks.append("\n".join(cur))
    return blocks


def find_valgrind():
    path = shutil.which("valgrind") or ("/usr/bin/valgrind" if os.access("/usr/bin/valgrind", os.X_OK) else None)
    if path is None:
        pytest.fail("valgrind is not installed: this test needs it (apt-get install valgrind); it is not skipped")
    return path


@pytest.mark.slow
def test_no_memory_errors_or_leaks(tiny_target_gguf, tiny_drafter_gguf, tmp_path):
    valgrind = find_valgrind()
    script = tmp_path / "memcheck_child.py"
    script.write_text(CHILD)
    log = tmp_path / "valgrind.log"
    env = dict(os.environ, PYTHONMALLOC="malloc", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONDEVMODE", None)
    cmd = [valgrind, "--tool=memcheck", "--error-exitcode=99", "--leak-check=full",
           "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite", "--num-callers=40",
           "--keep-debuginfo=yes",  # names frames of libraries unloaded before the leak check
           f"--suppressions={SUPPRESSIONS}", f"--log-file={log}",
           sys.executable, str(script), tiny_target_gguf, tiny_drafter_gguf, str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    vlog = log.read_text() if log.exists() else ""
    tail = "\n".join(vlog.splitlines()[-40:])

    if DONE not in proc.stdout:
        hint = ""
        if "unhandled instruction" in vlog or "Unrecognised instruction" in vlog:
            hint = ("\nvalgrind could not decode an instruction (llama.cpp built for a CPU feature valgrind lacks, "
                    "e.g. AVX-512): build llama-cpp-python for a baseline CPU to run this test.")
        pytest.fail(f"the script under valgrind did not finish (exit code {proc.returncode}){hint}\n"
                    f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}\n--- valgrind log (tail)\n{tail}")

    errors = valgrind_errors(vlog)
    own = [e for e in errors if OWN_FRAMES.search(e)]
    assert not own, (f"{len(own)} valgrind error(s) in ppow / llama.cpp frames:\n\n" + "\n\n".join(own[:10]))
    assert "nanobind: leaked" not in proc.stderr, proc.stderr[-3000:]
    summary = re.search(r"ERROR SUMMARY: (\d+) errors", vlog)
    assert summary is not None, f"no ERROR SUMMARY in the valgrind log:\n{tail}"
    assert proc.returncode == 0 and summary.group(1) == "0", (
        f"valgrind exit code {proc.returncode}, {summary.group(1)} unsuppressed error(s) outside ppow's frames "
        f"(new CPython/system noise belongs in tests/valgrind.supp):\n\n" + "\n\n".join(errors[:10]) + f"\n\n{tail}")


def test_error_parser():
    """The log parser finds records and tells ppow's frames from the interpreter's."""
    log = textwrap.dedent("""\
        ==7== Memcheck, a memory error detector
        ==7== Invalid read of size 4
        ==7==    at 0x1: ppow::Engine::generate(...) (engine.cpp:10)
        ==7==    by 0x2: ??? (in /x/ppow/_core.cpython-311-x86_64-linux-gnu.so)
        ==7==  Address 0x3 is 0 bytes after a block of size 4 alloc'd
        ==7== 
        ==7== Use of uninitialised value of size 8
        ==7==    at 0x4: Py_INCREF (object.h:502)
        ==7== 
        ==7== 8 bytes in 1 blocks are definitely lost in loss record 1 of 2
        ==7==    at 0x5: malloc (vg_replace_malloc.c:1)
        ==7==    by 0x6: llama_model_load_from_file (in /x/libllama.so.0)
        ==7== 
        ==7== ERROR SUMMARY: 3 errors from 3 contexts (suppressed: 0 from 0)
        """)
    errs = valgrind_errors(log)
    assert len(errs) == 3
    assert [bool(OWN_FRAMES.search(e)) for e in errs] == [True, False, True]
