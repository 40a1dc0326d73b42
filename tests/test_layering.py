"""The import rule: the runtime (ppow, ppow.cli, ppow.bench) installs and runs without torch, and the
trainer (ppow.train) stands above it.

- every runtime module imports in a process where torch cannot be imported, and the bench's commands
  get past their imports there (`--help`);
- no runtime module imports ppow.train (checked on the source, lazy imports inside functions included);
- ppow.train takes nothing private (`_name`) from ppow.bench;
- no import circle inside ppow.train (what two modules both need lives in a third, below both).
"""
import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "python" / "ppow"


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules():
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imported(name: str, path: Path):
    """(module, names) for every import statement of a module, relative ones resolved, function-level ones
    included."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod, [a.name for a in node.names]


def is_runtime(name: str) -> bool:
    return name != "ppow.train" and not name.startswith("ppow.train.")


def under(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


def test_module_walk_sees_both_sides():
    mods = all_modules()  # a walk that found nothing would pass every test below
    assert "ppow.bench.datagen" in mods and "ppow.train.datagen" in mods and "ppow.generator" in mods


def test_runtime_modules_never_import_the_trainer():
    bad = []
    for name, path in all_modules().items():
        if is_runtime(name):
            for mod, names in imported(name, path):
                targets = [mod] + [f"{mod}.{n}" for n in names]
                if any(under(t, "ppow.train") for t in targets):
                    bad.append(f"{name} imports {mod} {names or ''}")
    assert not bad, "the runtime imports the trainer (move what both need below both):\n" + "\n".join(bad)


def test_the_rule_check_catches_a_bench_module_importing_the_trainer(tmp_path):
    p = tmp_path / "datagen.py"
    p.write_text("def main():\n    from ..train.data import read_prompts\n")
    found = [m for m, _ in imported("ppow.bench.datagen", p)]
    assert found == ["ppow.train.data"]


def test_trainer_takes_nothing_private_from_the_bench():
    bad = []
    for name, path in all_modules().items():
        if not is_runtime(name):
            for mod, names in imported(name, path):
                if under(mod, "ppow.bench"):
                    private = [n for n in names if n.startswith("_")]
                    private += [p for p in mod.split(".") if p.startswith("_")]
                    if private:
                        bad.append(f"{name} imports {private} from {mod}")
    assert not bad, "\n".join(bad)


def test_no_import_circles_inside_the_trainer():
    mods = {n: p for n, p in all_modules().items() if under(n, "ppow.train") and n != "ppow.train"}
    graph = {}
    for name, path in mods.items():
        deps = set()
        for mod, names in imported(name, path):
            for t in [mod] + [f"{mod}.{n}" for n in names]:
                if t in mods and t != name:
                    deps.add(t)
        graph[name] = deps
    # every pair a -> ... -> b -> ... -> a is a circle; the trainer is small, so a reachability sweep does
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for d in graph[todo.pop()]:
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        reach[start] = seen
    circles = sorted({tuple(sorted((a, b))) for a in graph for b in reach[a] if a != b and a in reach[b]})
    assert not circles, f"import circles inside ppow.train: {circles}"


BLOCK_TORCH = textwrap.dedent("""
    import importlib, importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test (asked for {name})")
            return None

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the torch blocker does not work")
""")


def run_without_torch(code: str):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env=env)


def test_runtime_imports_and_bench_commands_start_without_torch():
    names = sorted(n for n in all_modules() if is_runtime(n))
    if not __import__("importlib").util.find_spec("matplotlib"):
        names.remove("ppow.bench.plots")  # the bench extra's plotting library, absent from a runtime-only install
    r = run_without_torch(f"""
        import contextlib, importlib, io
        for name in {names!r}:
            importlib.import_module(name)
        from ppow.bench import cli as bench_cli, datagen, depth
        from ppow.cli import run
        for main in (bench_cli.main, datagen.main, depth.main, run.main):
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(["--help"])
                except SystemExit as e:
                    assert e.code in (0, None), (main, e.code)
        assert "torch" not in sys.modules
        print("ok", len({names!r}))
    """)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr
    assert int(r.stdout.split()[1]) >= 15  # generator, models, templates, the bench's modules, ppow-run, ...


def test_the_torch_blocker_blocks():
    r = run_without_torch("import ppow.train.kd\n")
    assert r.returncode != 0 and "torch is blocked" in r.stderr
