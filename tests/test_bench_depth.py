"""python -m ppow.bench.depth without llama-bench: every ppow system runs at every depth and the
report says which one-token rule each Generator took."""
import json

from ppow.bench import depth


def test_depth_report(tiny_target_gguf, tmp_path):
    out = tmp_path / "depth.json"
    assert depth.main(["--target", str(tiny_target_gguf), "--depths", "0,16", "--repeats", "1", "--threads", "2",
                       "--compare-pad", "-o", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert [r["depth"] for r in rep["rows"]] == [0, 16]
    for r in rep["rows"]:
        assert all(r[name] > 0 for name in ("ppow fa=auto", "ppow fa=off", "ppow fa=auto pad"))
    # the padding rule is what PPOW_CPU_REF=0 asks for; the default takes the switch where it needs one
    assert rep["ppow_backend"]["ppow fa=auto pad"]["ref_attention"] is False
    assert rep["ppow_backend"]["ppow fa=off"]["ref_attention"] is False  # without flash attention: padding
