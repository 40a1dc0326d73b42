#!/usr/bin/env python3
"""Why do a CUDA build of ppow and torch crash in one process? (issue 22) Each variant runs in its own
subprocess; the result is its exit code, the tail of its output, and the CUDA/C++ runtime libraries
mapped into it at the last point it reached. Also `ldd` of the libraries involved and, where gdb is
present, a backtrace of each crashing variant. Prints one JSON object."""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys

MAPS = """
def maps(tag):
    libs = sorted({l.split()[-1] for l in open('/proc/self/maps') if any(k in l for k in
                   ('cuda', 'cublas', 'gomp', 'stdc++', 'nvrtc', 'ggml', 'llama', 'nvJit'))})
    print('MAPS', tag, json.dumps(libs), flush=True)
"""
GEN = "g = ppow.Generator(T, n_gpu_layers=99, n_ctx=256); print('GEN', g.generate('Hello', n_predict=8).text[:40], flush=True)"
TORCH_OP = "x = torch.ones(256, device='cuda'); print('TORCH', float((x @ x).item()), flush=True)"
VARIANTS = {
    "ppow alone": ["import ppow", GEN],
    "torch alone": ["import torch", TORCH_OP],
    "torch then ppow": ["import torch", TORCH_OP, "maps('after torch')", "import ppow", "maps('after import ppow')", GEN,
                        TORCH_OP],
    "ppow then torch": ["import ppow", GEN, "maps('after ppow')", "import torch", "maps('after import torch')", TORCH_OP,
                        GEN],
    "import ppow, import torch (no GPU work before)": ["import ppow", "maps('after ppow')", "import torch", TORCH_OP, GEN],
}


def nvidia_libs():
    """torch's CUDA libraries from the nvidia-* wheels (what it loads itself)."""
    try:
        import importlib.util
        spec = importlib.util.find_spec("nvidia")
        roots = list(spec.submodule_search_locations) if spec else []
    except Exception:
        roots = []
    return sorted(p for r in roots for p in glob.glob(os.path.join(r, "*", "lib", "lib*.so*")))


def run(code_lines, env_extra, timeout, gdb=False):
    code = "import json, sys\nT = sys.argv[1]\n" + MAPS + "\n".join(code_lines) + "\nprint('DONE', flush=True)\n"
    env = dict(os.environ, **env_extra)
    cmd = [sys.executable, "-c", code, TARGET]
    if gdb:
        cmd = ["gdb", "-batch", "-ex", "run", "-ex", "bt 25", "--args"] + cmd
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        out = r.stdout + r.stderr
        rc = r.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    lines = [ln for ln in out.splitlines() if not ln.startswith(("llama_", "load", "print_info", "gguf", "ggml_cuda_init"))]
    maps = [ln for ln in lines if ln.startswith("MAPS")]
    rest = [ln for ln in lines if not ln.startswith("MAPS")]
    return dict(rc=rc, done="DONE" in out, maps=maps, tail="\n".join(rest[-25:])[-3000:])


def main():
    global TARGET
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--timeout", type=int, default=60)
    a = ap.parse_args()
    TARGET = a.target
    res = dict(python=sys.version, variants={}, ldd={})
    import ppow  # the build under test (no torch in this process)

    core = glob.glob(os.path.join(os.path.dirname(ppow.__file__), "_core*.so"))
    import llama_cpp
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    for so in core + sorted(glob.glob(os.path.join(libdir, "libggml-cuda*.so*")))[:1]:
        r = subprocess.run(["ldd", so], capture_output=True, text=True)
        res["ldd"][os.path.basename(so)] = [ln.strip() for ln in r.stdout.splitlines()
                                            if any(k in ln for k in ("cuda", "cublas", "gomp", "stdc++", "ggml", "llama"))]
    nv = nvidia_libs()
    res["torch_nvidia_libs"] = [os.path.basename(p) for p in nv]
    for name, lines in VARIANTS.items():
        res["variants"][name] = run(lines, {}, a.timeout)
    # candidate fixes: make ggml resolve the CUDA libraries torch uses (one copy of each in the process)
    nv_dirs = sorted({os.path.dirname(p) for p in nv})
    if nv_dirs:
        env = {"LD_LIBRARY_PATH": ":".join(nv_dirs + [os.environ.get("LD_LIBRARY_PATH", "")])}
        for name in ("torch then ppow", "ppow then torch"):
            res["variants"][name + " | LD_LIBRARY_PATH=torch's nvidia libs"] = run(VARIANTS[name], env, a.timeout)
        pre = [p for p in nv if any(k in os.path.basename(p) for k in ("libcudart.so", "libcublas.so", "libcublasLt.so"))]
        if pre:
            env = {"LD_PRELOAD": ":".join(pre)}
            res["variants"]["ppow then torch | LD_PRELOAD=torch's cudart/cublas"] = run(VARIANTS["ppow then torch"], env, a.timeout)
    if shutil.which("gdb"):
        for name, v in list(res["variants"].items()):
            if v["rc"] not in (0, "timeout") and "|" not in name:
                res["variants"][name]["gdb"] = run(VARIANTS[name], {}, a.timeout * 2, gdb=True)["tail"]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
