"""report.json (everything, machine-readable) and report.md (the tables a reader wants)."""
from __future__ import annotations

import json
import os


def _f(x, fmt="{:.2f}"):
    return "–" if x is None else fmt.format(x)


def _speculative(report):
    return [s for s in report["systems"] if s["baseline"] is not None]


def _table(header, rows) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def overall_table(report) -> list:
    mism = {}
    for m in report["mismatches"] + report["peer_mismatches"]:
        mism[m["system"]] = mism.get(m["system"], 0) + 1
    rows = []
    for s in report["systems"]:
        o = report["results"][s["name"]]["overall"]
        sp, tps = o["speedup"], o["tokens_per_second"]
        checked = "–" if s["baseline"] is None or not report["settings"]["greedy"] else mism.get(s["name"], 0)
        rows.append([s["name"], s["baseline"] or "(baseline)", _f(o["tau_pooled"]),
                     _f(tps and tps["median"], "{:.1f}"),
                     _f(sp and sp["median"]),
                     f"{_f(sp and sp['q1'])}–{_f(sp and sp['q3'])}" if sp else "–",
                     f"{_f(sp and sp['min'])}–{_f(sp and sp['max'])}" if sp else "–",
                     o["n_runs"], checked])
    return _table(["system", "compared with", "τ", "tok/s (median)", "speedup (median)", "speedup IQR",
                   "speedup min–max", "runs", "mismatches"], rows)


def category_table(report, value) -> list:
    systems = _speculative(report)
    cats = sorted({c for s in systems for c in report["results"][s["name"]]["by_category"]})
    rows = []
    for c in cats:
        row = [c]
        for s in systems:
            r = report["results"][s["name"]]["by_category"].get(c)
            row.append(_f(value(r)) if r else "–")
        rows.append(row)
    return _table(["category"] + [s["name"] for s in systems], rows)


def acceptance_table(report) -> list:
    rows = []
    width = 0
    for s in _speculative(report):
        rate = report["results"][s["name"]]["overall"]["acceptance_by_position"]["rate"]
        if rate:
            rows.append([s["name"]] + [_f(r) for r in rate])
            width = max(width, len(rate))
    rows = [r + ["–"] * (width + 1 - len(r)) for r in rows]
    return _table(["system"] + [str(i + 1) for i in range(width)], rows) if rows else ["(no drafted tokens)"]


def render_markdown(report) -> str:
    st, mach = report["settings"], report["machine"]
    L = ["# ppow-bench report", ""]
    L.append(f"- target: `{st['target']}`")
    for name, path in st["drafters"].items():
        L.append(f"- drafter `{name}`: `{path}`")
    L.append(f"- prompts: `{st['prompts']}`: {st['n_prompts']} prompts in {len(st['categories'])} categories, "
             f"template `{st['template']}`, first turn only")
    L.append(f"- {st['n_predict']} tokens per prompt, " + ("greedy" if st["greedy"] else f"temperature {st['temp']}")
             + f", k = {', '.join(map(str, st['k']))}" + (f", auto (draft_max {st['auto_max']})" if st["auto"] else "")
             + f", repeats {st['repeats']}, threads {st['threads'] or 'all'}, n_ctx {st['n_ctx']}, seed {st['seed']}")
    L.append(f"- machine: {mach['platform']}, {mach['processor'] or 'cpu'} ({mach['cpu_count']} logical CPUs); "
             f"llama.cpp {mach['build'].get('llama_cpp_version', '?')}, "
             f"llama-cpp-python {mach['build'].get('llama_cpp_python', '?')}, {', '.join(mach['build'].get('devices', []))}")
    L.append("")
    L.append("Systems ran interleaved prompt by prompt, in a shuffled order per prompt. Speedup is per prompt: "
             "tokens/s of the system over tokens/s of the plain run it is compared with (same prompt, same "
             "repeat); medians and spreads are over prompts × repeats. τ = tokens committed per target step, "
             "pooled over all runs. ppow and llama-cpp-python times exclude prompt processing (the prompt is "
             "in both models' caches before the clock starts); HF times are whole generate() calls, prompt "
             "included, and HF speedups are relative to HF plain.")
    L.append("")
    L.append("## Overall")
    L.append("")
    L += overall_table(report)
    L.append("")
    if _speculative(report):
        L.append("## Speedup by category (median over prompts)")
        L.append("")
        L += category_table(report, lambda r: r["speedup"] and r["speedup"]["median"])
        L.append("")
        L.append("## τ by category (pooled)")
        L.append("")
        L += category_table(report, lambda r: r["tau_pooled"])
        L.append("")
        L.append("## Acceptance by draft position (pooled)")
        L.append("")
        L += acceptance_table(report)
        L.append("")
    if report.get("head_to_head"):
        L.append("## Head to head (same drafter GGUF, same k)")
        L.append("")
        L.append("Per prompt: ppow's tokens/s over the peer's; median, IQR and min–max over prompts.")
        L.append("")
        L += _table(["ppow", "peer", "median ratio", "IQR", "min–max", "prompts"],
                    [[h["ppow"], h["peer"], _f(h["ratio"] and h["ratio"]["median"]),
                      f"{_f(h['ratio'] and h['ratio']['q1'])}–{_f(h['ratio'] and h['ratio']['q3'])}",
                      f"{_f(h['ratio'] and h['ratio']['min'])}–{_f(h['ratio'] and h['ratio']['max'])}",
                      h["ratio"]["n"] if h["ratio"] else 0] for h in report["head_to_head"]])
        L.append("")
    L.append("## Output check")
    L.append("")
    mismatch_header = ["system", "prompt", "category", "repeat", "first differing position", "expected", "got"]

    def mismatch_rows(ms):
        return [[m["system"], m["qid"], m["category"], m["repeat"], m["position"], m["expected"], m["got"]] for m in ms]

    if not st["greedy"]:
        L.append("Sampling (temperature > 0): outputs legitimately differ, no token-for-token check.")
    elif not report["mismatches"]:
        L.append(f"OK: all {report['n_checked']} speculative greedy runs of ppow matched ppow plain token for token.")
    else:
        L.append(f"FAILED: {len(report['mismatches'])} of {report['n_checked']} speculative greedy runs of ppow "
                 f"differ from ppow plain.")
        L.append("")
        L += _table(mismatch_header, mismatch_rows(report["mismatches"]))
    if st["greedy"] and report["n_checked_peers"]:
        L.append("")
        L.append(f"Peers (reported, not failures: none verifies with batch-invariant kernels): "
                 f"{len(report['peer_mismatches'])} of {report['n_checked_peers']} speculative greedy runs "
                 f"differ from their own engine's plain output.")
        if report["peer_mismatches"]:
            L.append("")
            L += _table(mismatch_header, mismatch_rows(report["peer_mismatches"]))
    if report["skipped"]:
        L.append("")
        L.append("## Skipped")
        L.append("")
        for s in report["skipped"]:
            L.append(f"- {s['system']}: skipped: {s['reason']}")
    notes = [(s["name"], n) for s in report["systems"] for n in s["notes"]]
    if notes:
        L.append("")
        L.append("## Notes")
        L.append("")
        for name, n in notes:
            L.append(f"- {name}: {n}")
    L.append("")
    if report.get("plots"):
        L.append("Plots: " + ", ".join(f"[{p}]({p})" for p in report["plots"]))
        L.append("")
    return "\n".join(L)


def write_report(outdir, report) -> tuple[str, str]:
    os.makedirs(outdir, exist_ok=True)
    jpath, mpath = os.path.join(outdir, "report.json"), os.path.join(outdir, "report.md")
    with open(jpath, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    with open(mpath, "w", encoding="utf-8") as f:
        f.write(render_markdown(report))
    return jpath, mpath
