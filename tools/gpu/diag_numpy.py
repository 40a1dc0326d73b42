#!/usr/bin/env python3
"""Why does `import numpy` before a CUDA Generator crash a CUDA build of ppow? (issue 22)

The H200 session of 2026-12-04 narrowed torch's crash beside ppow to this: a process that imports numpy
and then creates a ppow Generator with layers on the GPU segfaults; without numpy it runs, and
llama-cpp-python's own Llama runs with numpy. There is no gdb on the device, so each variant runs in its
own subprocess with tools/gpu/segv_backtrace.so preloaded (native frames as library + offset, named
with addr2line where binutils exist) and Python's faulthandler (the Python frames). The variants split
the suspects: numpy's bundled libraries alone, the order (numpy after the CUDA context), ggml's CUDA
graphs, ppow's padding and flash attention, a CPU-only Generator of the same build, and device
enumeration alone. Prints a JSON line per variant as it ends, then one JSON object with all of them.

  cc -shared -fPIC -O1 -o segv_backtrace.so tools/gpu/segv_backtrace.c -ldl
  python3 tools/gpu/diag_numpy.py --target gemma.gguf --preload ./segv_backtrace.so > numpy.json
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys

GEN = ("g = ppow.Generator(T, n_gpu_layers={ngl}, n_ctx={n_ctx}{extra}); "
       "print('GEN', repr(g.generate('Hello', n_predict=8).text[:40]), flush=True)")
NUMPY_LIBS = ("import glob, os, ctypes, importlib.util; "
              "d = os.path.join(os.path.dirname(importlib.util.find_spec('numpy').origin), '..', 'numpy.libs'); "
              "libs = sorted(glob.glob(os.path.join(d, '*.so*'))); print('LIBS', libs, flush=True); "
              "[ctypes.CDLL(p) for p in libs]")


def gen(ngl=99, extra="", n_ctx=512):
    return GEN.format(ngl=ngl, n_ctx=n_ctx, extra=extra)


VARIANTS = {
    "no numpy": ["import ppow", gen()],
    "numpy, then ppow": ["import numpy", "import ppow", gen()],
    "numpy, then ppow on the CPU (ngl 0)": ["import numpy", "import ppow", gen(0)],
    "ppow Generator, then numpy, then generate": ["import ppow", gen(), "import numpy", gen()],
    "numpy.libs loaded with ctypes only, then ppow": [NUMPY_LIBS, "import ppow", gen()],
    "numpy, then ppow _core.build_info() only": ["import numpy", "from ppow import _core",
                                                 "print('INFO', _core.build_info(), flush=True)"],
    "numpy, then ppow with pad_rows=0": ["import numpy", "import ppow", gen(extra=", pad_rows=0")],
    "numpy, then ppow with flash_attn off": ["import numpy", "import ppow", gen(extra=", flash_attn='off'")],
    "numpy, then ppow with n_ctx 32768": ["import numpy", "import ppow", gen(n_ctx=32768)],
    "numpy, then llama_cpp.Llama (control)": [
        "import numpy", "import llama_cpp",
        "m = llama_cpp.Llama(T, n_gpu_layers=99, n_ctx=512, verbose=False); "
        "print('LLAMA', repr(m('Hello', max_tokens=8)['choices'][0]['text'][:40]), flush=True)"],
}
ENV_VARIANTS = {
    "numpy, then ppow | GGML_CUDA_DISABLE_GRAPHS=1": ("numpy, then ppow", {"GGML_CUDA_DISABLE_GRAPHS": "1"}),
    "numpy, then ppow | OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1": (
        "numpy, then ppow", {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}),
    "numpy, then ppow | MALLOC_CHECK_=3": ("numpy, then ppow", {"MALLOC_CHECK_": "3"}),
}


def symbolize(frames):
    """'SEGV_FRAME i LIB +0xOFF SYM' lines -> the same with addr2line's function and file:line."""
    out = []
    a2l = shutil.which("addr2line")
    for ln in frames:
        parts = ln.split()
        if a2l and len(parts) >= 4 and parts[3].startswith("+0x") and os.path.exists(parts[2]):
            r = subprocess.run([a2l, "-f", "-C", "-e", parts[2], parts[3][1:]], capture_output=True, text=True)
            ln += "  => " + " @ ".join(r.stdout.split())
        out.append(ln)
    return out


def run(lines, env_extra, preload, timeout):
    code = "import sys, faulthandler; faulthandler.enable(); T = sys.argv[1]\n" + "\n".join(lines) + \
        "\nprint('DONE', flush=True)\n"
    env = dict(os.environ, **env_extra)
    if preload:
        env["LD_PRELOAD"] = ":".join(p for p in (preload, env.get("LD_PRELOAD", "")) if p)
    try:
        r = subprocess.run([sys.executable, "-c", code, TARGET], capture_output=True, text=True, timeout=timeout, env=env)
        out, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc = "timeout"
    lines = out.splitlines()
    frames = [ln for ln in lines if ln.startswith(("SEGV_BACKTRACE", "SEGV_FRAME"))]
    py = [ln for ln in lines if ln.startswith(("Fatal Python error", "Current thread", "Thread 0x", "  File"))]
    rest = [ln for ln in lines if ln not in frames and ln not in py and
            not ln.startswith(("llama_", "load", "print_info", "gguf", "ggml_cuda_init", "  Device"))]
    return dict(rc=rc, done="DONE" in out, native=symbolize(frames)[:40], python=py[:30], tail="\n".join(rest[-15:])[-2000:])


def main():
    global TARGET
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--preload", default="", help="segv_backtrace.so (built from tools/gpu/segv_backtrace.c)")
    ap.add_argument("--timeout", type=int, default=90)
    ap.add_argument("--only", default="", help="variant names separated by ; (default: all)")
    a = ap.parse_args()
    TARGET = a.target
    import numpy

    res = dict(python=sys.version, numpy=numpy.__version__, numpy_file=numpy.__file__,
               numpy_libs=sorted(os.path.basename(p) for p in glob.glob(
                   os.path.join(os.path.dirname(numpy.__file__), "..", "numpy.libs", "*"))), variants={})
    only = set(filter(None, a.only.split(";")))
    todo = [(name, lines, {}) for name, lines in VARIANTS.items()] + \
        [(name, VARIANTS[base], env) for name, (base, env) in ENV_VARIANTS.items()]
    for name, lines, env in todo:
        if not only or name in only:
            res["variants"][name] = run(lines, env, a.preload, a.timeout)
            # one line per variant as it ends, so a step killed by its deadline keeps what it learned
            print(json.dumps({"variant": name, **res["variants"][name]}), flush=True)
            print(name, res["variants"][name]["rc"], file=sys.stderr, flush=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
