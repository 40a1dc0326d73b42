"""Memory checks of ppow._core over a short session (load, greedy + sampled speculative generation,
streaming, context limit, error paths, load failures, close): no invalid reads/writes/frees and no
leaks.

test_asan_no_memory_errors_or_leaks runs on every machine. It builds _core from the sources in cpp/
with AddressSanitizer (CMakeLists.txt's PPOW_SANITIZE, configured with cmake + ninja into a temporary
directory, ~35 s on 2 cores), puts it next to a copy of the installed ppow's Python files and runs the
script below with the compiler's ASan runtime preloaded and PYTHONMALLOC=malloc (every Python object is
a malloc block ASan tracks). Any ASan report (heap/stack/global overflow, use-after-free, double or
mismatched free, SEGV, ...) fails the test, and so does any leak that LeakSanitizer reports at exit with
a ppow / nanobind / llama.cpp / ggml frame in its allocation stack (CPython's own leaks at exit, if an
interpreter has any, are not ours; tests/lsan.supp is where other noise would go). The script also
leaks one block on purpose, from Python through ctypes: the test requires LeakSanitizer to report it, so
a leak check that did not run cannot pass.

test_valgrind_no_memory_errors_or_leaks adds valgrind memcheck (which also sees uses of uninitialised
memory) where valgrind can run llama.cpp: valgrind 3.19 (Debian 12's) decodes neither AVX-512, AVX-VNNI
nor AMX instructions, so on machines whose llama.cpp build uses them (llama-cpp-python builds for the
host CPU) it is skipped, saying so, and the ASan test is the memory check there. Noise from CPython,
ld.so, libgomp and llama.cpp's static objects is suppressed by tests/valgrind.supp.
"""
import glob
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SUPPRESSIONS = os.path.join(HERE, "valgrind.supp")
LSAN_SUPPRESSIONS = os.path.join(HERE, "lsan.supp")
DONE = "memcheck-child: done"
CANARY_BYTES = 4321  # the block the script leaks on purpose when PPOW_MEMCHECK_CANARY is set
ASAN_EXITCODE = 86   # exit status of a process whose ASan/LSan run reported something

CHILD = textwrap.dedent(f'''
    import gc
    import os
    import sys

    # An editable install (pip install -e) puts an import hook ahead of PYTHONPATH that would load the
    # installed _core instead of the ASan build beside this copy of the package: leave it out.
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
    # nanobind imports numpy the first time _core returns an array. Import it first, so that the import
    # machinery's own allocations are not made under a _core frame and read as ppow's leaks (seen with
    # an editable install: a float from os.stat that CPython 3.11's import leaves unreachable).
    import numpy  # noqa: F401

    import ppow
    from ppow import PpowError, _core

    target, drafter, workdir, feature_drafter, wrong_feature = sys.argv[1:6]
    print("memcheck-child: _core", _core.__file__, flush=True)
    if os.environ.get("PPOW_MEMCHECK_CANARY"):  # a leak the checker must see (ignored: no ppow frames)
        import ctypes
        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.malloc(int(os.environ["PPOW_MEMCHECK_CANARY"]))


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
        # Prompt lookup beside the drafter: fixed and auto, greedy and sampled.
        rep = "The quick brown fox jumps over the lazy dog. The quick brown fox"
        assert g.generate(rep, n_predict=12, ignore_eos=True, draft_max=3, lookup=True).stats.n_lookup_steps > 0
        g.generate(rep, n_predict=12, ignore_eos=True, draft_max=3, lookup=True, draft_policy="auto", temp=0.8, seed=3)
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
        # Hidden-state capture, and its errors.
        lg, feats = g.features(ids[:12], layers=[0, 1, 2], n_last=12)
        assert feats.shape[:2] == (3, 12) and lg.shape[0] == 12
        expect(PpowError, g.features, ids[:12], [99])
        expect(PpowError, g.features, ids[:12], [2], n_last=1)

    # The feature (eagle3) drafter: features captured from every target decode, its own KV catch-up.
    with ppow.Generator(target, feature_drafter, n_ctx=64, n_threads=1) as g:
        ref = g.generate("The quick brown fox", n_predict=16, ignore_eos=True, use_drafter=False)
        out = g.generate("The quick brown fox", n_predict=16, ignore_eos=True, draft_max=4)
        assert out.tokens == ref.tokens and out.stats.n_drafted > 0, (out.tokens, ref.tokens)
        s = g.generate("Once upon a time", n_predict=16, ignore_eos=True, draft_max=3,
                       temp=0.8, top_k=40, top_p=0.9, seed=7)
        assert len(s.tokens) == 16 and s.stats.n_drafted > 0
        g.generate("Once upon a time", n_predict=12, ignore_eos=True, draft_max=4, draft_policy="auto")
        assert g.generate(rep, n_predict=12, ignore_eos=True, draft_max=3, lookup=True).stats.n_lookup_steps > 0
        g.generate(rep, n_predict=12, ignore_eos=True, draft_max=3, lookup=True, draft_policy="auto", temp=0.8, seed=3)
        g.cost_profile(4)
        assert "".join(g.stream("hello", n_predict=6, ignore_eos=True)) != ""
        c = g.generate(ids, n_predict=16, ignore_eos=True, draft_max=8)
        assert c.stats.stop_reason == "context", c.stats.stop_reason
    expect(PpowError, ppow.Generator, target, wrong_feature)  # target_hidden_size does not fit

    # The data engine: several sequences in flight, records handed to Python, errors.
    dmp = model_params(target)
    dmp.n_parallel, dmp.n_ctx, dmp.batch_invariant = 3, 3 * 48 + 256, False
    dg = _core.DataGen(dmp)
    dp = _core.DataGenParams()
    dp.max_new, dp.topk, dp.layers = 12, 4, [0, 1]
    recs = []
    dg.run([dg.tokenize(t, True) for t in ("The quick", "Once upon", "The river", "def add")], dp, 48, recs.append)
    assert len(recs) == 4 and all(r["hidden_bf16"].shape[1:] == (2, 64) for r in recs)
    dp.temp = 0.8
    dg.run([dg.tokenize("The quick", True)] * 2, dp, 48, recs.append, [7, 8])
    expect(_core.EngineError, dg.run, [[1] * 60], dp, 48, recs.append)
    expect(ZeroDivisionError, dg.run, [[1, 2]], dp, 48, lambda r: 1 / 0)
    del dg, recs

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
    with open("/proc/self/maps") as f:
        libs = sorted({{line.split()[-1] for line in f if "libllama" in line or "libggml" in line}})
    print("memcheck-child: libs", *libs, flush=True)
    print("{DONE}", flush=True)
''')

# Frames of ppow itself (symbols, or the module's file when it has none) and of the llama.cpp it drives.
OWN_FRAMES = re.compile(r"_core\.cpython|ppow::|nanobind|\bnb::|libllama|libggml|\bllama_|\bggml_")


# ---------------------------------------------------------------------------------------------------
# AddressSanitizer + LeakSanitizer (every machine)

# First line of an ASan report that is an error whatever its stack: memory errors, deadly signals, the
# runtime's own failures, and a leak check that could not run. "detected memory leaks" only introduces
# the leak records, which are judged one by one.
SAN_ERROR_HEAD = re.compile(r"^(ERROR: (AddressSanitizer|LeakSanitizer)(?!: detected memory leaks)|"
                            r"\w+Sanitizer: (CHECK failed|nested bug)|\w+Sanitizer:DEADLYSIGNAL|"
                            r"LeakSanitizer has encountered a fatal error|"
                            r"LeakSanitizer does not work under ptrace)")
SAN_LEAK_HEAD = re.compile(r"^(Direct|Indirect) leak of \d+ byte")


def sanitizer_reports(log: str) -> list:
    """(kind, text) for each report of an ASan/LSan log, '==pid==' prefixes removed. kind 'error': an
    AddressSanitizer report (or a runtime failure), up to its SUMMARY line; kind 'leak': one Direct or
    Indirect leak record with its allocation stack."""
    reports, kind, cur = [], None, []

    def close():
        nonlocal kind, cur
        if kind is not None:
            reports.append((kind, "\n".join(cur).rstrip()))
        kind, cur = None, []

    for line in log.splitlines():
        body = re.sub(r"^==\d+==", "", line)
        if re.fullmatch(r"=+", body):  # the rule printed before each report
            continue
        if SAN_ERROR_HEAD.match(body):
            if kind == "error" and len(cur) == 1 and cur[0].endswith("DEADLYSIGNAL"):
                cur.append(body)  # "AddressSanitizer:DEADLYSIGNAL" then "ERROR: ... SEGV ...": one report
                continue
            close()
            kind, cur = "error", [body]
        elif body.startswith("ERROR: LeakSanitizer: detected memory leaks"):
            close()
        elif SAN_LEAK_HEAD.match(body):
            close()
            kind, cur = "leak", [body]
        elif kind == "error":
            cur.append(body)
            if body.startswith("SUMMARY:"):
                close()
        elif kind == "leak":
            if body.strip():
                cur.append(body)
            else:
                close()
    close()
    return reports


def _compiler_file(cxx: str, name: str):
    """Absolute path of a runtime library as the compiler finds it, or None."""
    try:
        out = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True, timeout=60).stdout.strip()
    except OSError:
        return None
    return os.path.realpath(out) if os.path.isabs(out) and os.path.exists(out) else None


def build_asan_core(src_dir: str, build_dir: str) -> dict:
    """Configure src_dir (the ppow project) with PPOW_SANITIZE=ON and build the _core target in build_dir.

    Returns {"module": path of the ASan _core, "preload": libraries for LD_PRELOAD, "seconds": build time}."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake is not on PATH: the ASan build of ppow._core needs it (README prerequisites)")
    t0 = time.monotonic()
    cfg = [cmake, "-S", src_dir, "-B", build_dir, "-DPPOW_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
           f"-DPython_EXECUTABLE={sys.executable}",
           f"-DSKBUILD_PROJECT_VERSION={importlib.metadata.version('ppow')}"]
    if shutil.which("ninja"):
        cfg[1:1] = ["-G", "Ninja"]
    for cmd in (cfg, [cmake, "--build", build_dir, "--target", "_core", "--parallel", str(os.cpu_count() or 2)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
        if proc.returncode != 0:
            pytest.fail(f"the ASan build of ppow._core failed: {' '.join(cmd)} (exit code {proc.returncode})\n"
                        f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    modules = glob.glob(os.path.join(build_dir, "_core*.so"))
    assert len(modules) == 1, f"expected one _core module in {build_dir}, found {modules}"

    cache = open(os.path.join(build_dir, "CMakeCache.txt")).read()
    cxx = re.search(r"^CMAKE_CXX_COMPILER:\w+=(.*)$", cache, re.M).group(1)
    # The ASan runtime must be the first library of the process (GCC: libasan; Clang: the shared
    # compiler-rt runtime). libstdc++ is preloaded too: python does not link it, and libasan only finds
    # the __cxa_throw it wraps when libstdc++ is loaded before it initialises (else the first C++
    # exception stops the process with "CHECK failed: ... real___cxa_throw").
    asan = next(filter(None, (_compiler_file(cxx, n) for n in
                              ("libasan.so", "libclang_rt.asan.so", "libclang_rt.asan-x86_64.so"))), None)
    if asan is None:
        pytest.fail(f"{cxx} does not report its AddressSanitizer runtime (-print-file-name=libasan.so): "
                    "install it (Debian/Ubuntu: the libasan package of that GCC)")
    preload = [asan] + [p for p in [_compiler_file(cxx, "libstdc++.so.6")] if p]
    return {"module": modules[0], "preload": preload, "seconds": time.monotonic() - t0}


@pytest.fixture(scope="session")
def asan_core(tmp_path_factory):
    """ppow built with AddressSanitizer from this checkout's cpp/: a package directory for PYTHONPATH whose
    ppow/ holds the installed ppow's Python files and the ASan _core."""
    tmp = tmp_path_factory.mktemp("asan")
    built = build_asan_core(ROOT, str(tmp / "build"))
    installed = os.path.dirname(importlib.util.find_spec("ppow").origin)
    pkg = tmp / "pkg"
    shutil.copytree(installed, pkg / "ppow", ignore=shutil.ignore_patterns("_core*.so", "_core*.pyd", "__pycache__"))
    shutil.copy2(built["module"], pkg / "ppow")
    llama_lib = os.path.join(os.path.dirname(importlib.util.find_spec("llama_cpp").origin), "lib")
    return dict(built, pkgdir=str(pkg), module=str(pkg / "ppow" / os.path.basename(built["module"])),
                llama_lib=llama_lib)


def run_asan_child(asan_core, script, args, workdir):
    """Run a script with the ASan _core; returns (CompletedProcess, the ASan log text, seconds)."""
    log_prefix = os.path.join(workdir, "asan")
    env = dict(os.environ, PYTHONMALLOC="malloc", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [asan_core["pkgdir"], os.environ.get("PYTHONPATH")])),
               # the module's RUNPATH ($ORIGIN/../llama_cpp/lib) does not exist next to the copy: load the
               # very libllama/libggml the installed ppow and `import llama_cpp` use.
               LD_LIBRARY_PATH=os.pathsep.join(filter(None, [asan_core["llama_lib"], os.environ.get("LD_LIBRARY_PATH")])),
               LD_PRELOAD=" ".join(asan_core["preload"]),
               ASAN_OPTIONS=":".join([
                   "detect_leaks=1", "halt_on_error=1", "abort_on_error=0", f"exitcode={ASAN_EXITCODE}",
                   f"log_path={log_prefix}", "fast_unwind_on_malloc=0", "malloc_context_size=40",
                   "detect_stack_use_after_return=1", "check_initialization_order=1", "strict_init_order=1",
                   "symbolize=1", "handle_abort=1"]),
               LSAN_OPTIONS=f"suppressions={LSAN_SUPPRESSIONS}:print_suppressions=0",
               PPOW_MEMCHECK_CANARY=str(CANARY_BYTES))
    env.pop("PYTHONDEVMODE", None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          cwd=workdir, env=env, timeout=900)
    seconds = time.monotonic() - t0
    log = "".join(open(p, errors="replace").read() for p in sorted(glob.glob(log_prefix + ".*")))
    return proc, log, seconds


def _shorten(report: str, width: int = 400) -> str:
    """A report with its (nanobind-template-sized) frame lines cut to width characters."""
    return "\n".join(line if len(line) <= width else line[:width] + " ..." for line in report.splitlines())


def check_asan_run(proc, log, asan_core):
    """The assertions of the ASan test on one run (a function so a scratch experiment can reuse it)."""
    reports = sanitizer_reports(log)
    errors = [_shorten(r) for kind, r in reports if kind == "error"]
    leaks = [r for kind, r in reports if kind == "leak"]
    own_leaks = [_shorten(r) for r in leaks if OWN_FRAMES.search(r)]
    details = (f"exit code {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
               f"\n--- ASan log (head)\n{_shorten(log[:20000])[:6000]}")

    # First which _core ran, where the script got that far: reports from another build say nothing about this one.
    ran = re.search(r"^memcheck-child: _core (.*)$", proc.stdout, re.M)
    assert ran is None or ran.group(1) == asan_core["module"], (
        f"the script imported {ran.group(1)}, not the ASan build {asan_core['module']}\n{details}")
    assert not errors, (f"{len(errors)} AddressSanitizer report(s):\n\n" + "\n\n".join(errors[:5]) + f"\n\n{details}")
    assert not own_leaks, (f"{len(own_leaks)} leak(s) with ppow / nanobind / llama.cpp frames:\n\n"
                           + "\n\n".join(own_leaks[:10]))
    assert DONE in proc.stdout, f"the script under ASan did not finish\n{details}"
    assert ran, f"the script did not say which _core it imported\n{details}"
    libs = re.search(r"^memcheck-child: libs (.*)$", proc.stdout, re.M).group(1).split()
    assert libs and all(os.path.dirname(p) == asan_core["llama_lib"] for p in libs), (
        f"libllama/libggml not loaded from {asan_core['llama_lib']}: {libs}")
    assert "nanobind: leaked" not in proc.stderr, proc.stderr[-3000:]
    canary = [r for r in leaks if re.match(rf"Direct leak of {CANARY_BYTES} byte\(s\) in 1 object\(s\)", r)]
    assert canary, ("LeakSanitizer did not report the block the script leaks on purpose: the leak check did "
                    f"not run, or its log was not read\n{details}")
    # LSan ends a run with leaks (the canary at least) with ASAN_OPTIONS' exitcode.
    assert proc.returncode == ASAN_EXITCODE, f"unexpected exit code\n{details}"


@pytest.fixture(scope="module")
def feature_drafters(tiny_target_gguf, tmp_path_factory):
    """A random-weight eagle3 drafter for the tiny target, and one whose target hidden size is wrong."""
    from eagle3_random import write_random_eagle3
    d = tmp_path_factory.mktemp("memcheck-e3")
    good = write_random_eagle3(d / "feature.gguf", tiny_target_gguf, layers=[0, 1, 1], n_draft_vocab=64, seed=5)
    wrong = write_random_eagle3(d / "wrong.gguf", tiny_target_gguf, layers=[0, 1, 1], n_draft_vocab=64, seed=5,
                                overrides={"eagle3.target_hidden_size": 32})
    return [str(good), str(wrong)]


@pytest.mark.slow
def test_asan_no_memory_errors_or_leaks(asan_core, tiny_target_gguf, tiny_drafter_gguf, feature_drafters, tmp_path):
    script = tmp_path / "memcheck_child.py"
    script.write_text(CHILD)
    proc, log, seconds = run_asan_child(asan_core, script, [tiny_target_gguf, tiny_drafter_gguf, tmp_path,
                                                            *feature_drafters], tmp_path)
    check_asan_run(proc, log, asan_core)
    print(f"ASan build {asan_core['seconds']:.0f} s, run {seconds:.0f} s")


def test_sanitizer_parser():
    """The ASan/LSan log parser: errors whatever their stack, leak records one by one, ppow's frames."""
    log = textwrap.dedent("""\
        =================================================================
        ==42==ERROR: AddressSanitizer: heap-buffer-overflow on address 0x6020 at pc 0x7f bp 0x7f sp 0x7f
        WRITE of size 4 at 0x602000000018 thread T0
            #0 0x7f1 in ppow::Engine::generate(std::vector<int> const&) /src/cpp/engine.cpp:210
            #1 0x7f2 in nb_func_vectorcall_medium_pos /venv/nanobind/src/nb_func.cpp:1019

        0x602000000018 is located 0 bytes to the right of 8-byte region [0x602000000010,0x602000000018)
        allocated by thread T0 here:
            #0 0x7f3 in operator new(unsigned long) ../../../../src/libsanitizer/asan/asan_new_delete.cpp:95

        SUMMARY: AddressSanitizer: heap-buffer-overflow /src/cpp/engine.cpp:210 in ppow::Engine::generate
        Shadow bytes around the buggy address:
          0x0c047fff7fb0: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        AddressSanitizer:DEADLYSIGNAL
        =================================================================
        ==43==ERROR: AddressSanitizer: SEGV on unknown address 0x000000000000 (pc 0x7f4 T0)
            #0 0x7f4 in PyObject_GetAttr Objects/object.c:916

        SUMMARY: AddressSanitizer: SEGV Objects/object.c:916 in PyObject_GetAttr
        ==44==LeakSanitizer has encountered a fatal error.

        =================================================================
        ==45==ERROR: LeakSanitizer: detected memory leaks

        Direct leak of 40 byte(s) in 1 object(s) allocated from:
            #0 0x7f5 in operator new(unsigned long) ../../../../src/libsanitizer/asan/asan_new_delete.cpp:95
            #1 0x7f6 in llama_model_load_from_file (/venv/llama_cpp/lib/libllama.so.0+0x1234)

        Indirect leak of 16 byte(s) in 2 object(s) allocated from:
            #0 0x7f7 in __interceptor_malloc ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:69
            #1 0x7f8  (/tmp/pkg/ppow/_core.cpython-311-x86_64-linux-gnu.so+0x44fc0)

        Direct leak of 4321 byte(s) in 1 object(s) allocated from:
            #0 0x7f9 in __interceptor_malloc ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:69
            #1 0x7fa  (/lib/x86_64-linux-gnu/libffi.so.8+0x6f79)
            #2 0x7fb in _PyEval_EvalFrameDefault Python/ceval.c:4769

        SUMMARY: AddressSanitizer: 4377 byte(s) leaked in 4 allocation(s).
        """)
    reports = sanitizer_reports(log)
    assert [kind for kind, _ in reports] == ["error", "error", "error", "leak", "leak", "leak"]
    overflow, segv, fatal = (r for _, r in reports[:3])
    assert "heap-buffer-overflow" in overflow and "allocated by thread T0" in overflow and "Shadow" not in overflow
    assert overflow.endswith("in ppow::Engine::generate")
    assert segv.startswith("AddressSanitizer:DEADLYSIGNAL\nERROR: AddressSanitizer: SEGV")
    assert fatal == "LeakSanitizer has encountered a fatal error."
    assert [bool(OWN_FRAMES.search(r)) for _, r in reports] == [True, False, False, True, True, False]
    assert reports[5][1].startswith(f"Direct leak of {CANARY_BYTES} byte(s) in 1 object(s)")
    assert sanitizer_reports("") == [] and sanitizer_reports("memcheck-child: done\n") == []


# ---------------------------------------------------------------------------------------------------
# valgrind memcheck (machines whose llama.cpp build valgrind can decode)

ERROR_HEAD = re.compile(r"^(Invalid (read|write|free)|Mismatched free|Conditional jump|Use of uninitialised|"
                        r"Syscall param|Source and destination overlap|Argument '.*' of function|"
                        r".* bytes in .* blocks are definitely lost|Process terminating)")


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


# CPU features of a llama.cpp build that valgrind's x86-64 decoder lacks (EVEX-encoded AVX-512,
# VEX-encoded AVX-VNNI, AMX tiles): memcheck stops at the first such instruction with SIGILL.
VALGRIND_UNDECODABLE = re.compile(r"\b((?:AVX512|AMX|AVX_VNNI)\w*) = 1")


def valgrind_skip_reason(system_info: str, valgrind) -> str:
    """Why the valgrind variant cannot run here ('' when it can)."""
    undecodable = sorted(set(VALGRIND_UNDECODABLE.findall(system_info)))
    if undecodable:
        return (f"llama.cpp here is built with {', '.join(undecodable)}, which valgrind cannot decode; "
                "test_asan_no_memory_errors_or_leaks is the memory check on this machine")
    if valgrind is None:
        return "valgrind is not installed; test_asan_no_memory_errors_or_leaks is the memory check on this machine"
    return ""


def find_valgrind():
    return shutil.which("valgrind") or ("/usr/bin/valgrind" if os.access("/usr/bin/valgrind", os.X_OK) else None)


@pytest.mark.slow
def test_valgrind_no_memory_errors_or_leaks(tiny_target_gguf, tiny_drafter_gguf, feature_drafters, tmp_path):
    from ppow import _core
    valgrind = find_valgrind()
    reason = valgrind_skip_reason(_core.build_info()["system_info"], valgrind)
    if reason:
        pytest.skip(reason)
    script = tmp_path / "memcheck_child.py"
    script.write_text(CHILD)
    log = tmp_path / "valgrind.log"
    env = dict(os.environ, PYTHONMALLOC="malloc", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONDEVMODE", None)
    env.pop("PPOW_MEMCHECK_CANARY", None)
    cmd = [valgrind, "--tool=memcheck", "--error-exitcode=99", "--leak-check=full",
           "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite", "--num-callers=40",
           "--keep-debuginfo=yes",  # names frames of libraries unloaded before the leak check
           f"--suppressions={SUPPRESSIONS}", f"--log-file={log}",
           sys.executable, str(script), tiny_target_gguf, tiny_drafter_gguf, str(tmp_path), *feature_drafters]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    vlog = log.read_text() if log.exists() else ""
    tail = "\n".join(vlog.splitlines()[-40:])

    if DONE not in proc.stdout:
        hint = ""
        if "unhandled instruction" in vlog or "Unrecognised instruction" in vlog:
            hint = ("\nvalgrind could not decode an instruction (llama.cpp built for a CPU feature valgrind lacks "
                    "that VALGRIND_UNDECODABLE does not list yet)")
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


def test_valgrind_skip_reason():
    """The valgrind variant stands aside exactly where valgrind cannot decode llama.cpp's build."""
    avx2 = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 0 | LLAMAFILE = 1 | OPENMP = 1 | "
    avx512 = ("CPU : SSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | "
              "AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | OPENMP = 1 | ")
    assert valgrind_skip_reason(avx2, "/usr/bin/valgrind") == ""
    reason = valgrind_skip_reason(avx512, "/usr/bin/valgrind")
    assert "AVX512, AVX512_BF16" in reason and "AMX_INT8" in reason and "AVX_VNNI" in reason
    assert "test_asan_no_memory_errors_or_leaks" in reason
    assert "AVX_VNNI" in valgrind_skip_reason(avx2 + "AVX_VNNI = 1 | ", "/usr/bin/valgrind")
    assert "not installed" in valgrind_skip_reason(avx2, None)


def test_error_parser():
    """The valgrind log parser finds records and tells ppow's frames from the interpreter's."""
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
