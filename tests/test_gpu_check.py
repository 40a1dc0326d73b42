"""tools/gpu-check.sh, the one-command GPU check (docs/gpu.md): its plumbing on any machine. The GPU steps
themselves are tests/test_gpu.py (`-m gpu`) and the tools it calls; here: a selected step runs and is
summarised, the exit status follows the steps, and bad options are refused."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "gpu-check.sh")


def run(*args):
    env = dict(os.environ)
    # the script calls `python`: the interpreter running the tests, whatever its name
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)


def test_a_selected_step_runs_and_is_summarised(tmp_path):
    out = tmp_path / "check"
    res = run("--skip-build", "--only", "build-info", "-o", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    summary = (out / "summary.txt").read_text()
    assert "build-info: exit 0" in summary
    assert "every step passed" in summary
    assert '"backends"' in (out / "build-info.log").read_text()
    # steps not selected leave no trace
    assert not (out / "pytest-gpu.log").exists() and "bench" not in summary


def test_a_failing_step_fails_the_check(tmp_path):
    out = tmp_path / "check"
    # a prompts file that does not parse: the bench step runs and fails, the check says so
    bad = tmp_path / "prompts.jsonl"
    bad.write_text("not json\n")
    res = run("--skip-build", "--only", "bench", "--prompts", str(bad), "--bench-limit", "1", "-o", str(out))
    assert res.returncode == 1, res.stdout + res.stderr
    summary = (out / "summary.txt").read_text()
    assert "some step FAILED" in summary and "bench: exit " in summary and "bench: exit 0" not in summary


def test_unknown_option_is_refused(tmp_path):
    res = run("--no-such-option", "-o", str(tmp_path / "x"))
    assert res.returncode == 2
    assert "unknown option --no-such-option" in res.stderr
