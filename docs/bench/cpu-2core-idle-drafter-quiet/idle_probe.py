import json, statistics as st, sys, time
from ppow import Generator
from ppow.models import resolve_target
T = resolve_target("gemma3-270m")
prompts = [json.loads(l)["turns"][0] for l in open("/work/shared/data/specbench-dev.jsonl")][:40:3]
gens = {"plain": Generator(T, n_threads=2, n_ctx=1024),
        "useless": Generator(T, drafter="/work/runs/h22/useless-standalone.gguf", n_threads=2, n_ctx=1024)}
rows = {k: [] for k in gens}
for rep in range(2):
    for p in prompts:
        for name, g in gens.items():
            kw = {} if name == "plain" else dict(draft_policy="auto")
            r = g.generate("Question: " + p[:600] + "\nAnswer:", n_predict=64, **kw)
            s = r.stats
            rows[name].append(dict(total=s.t_total_ms - s.t_prompt_ms, verify=s.t_verify_ms, draft=s.t_draft_ms,
                                   sample=s.t_sample_ms, steps=s.n_steps, drafted=s.n_drafted, probes=s.n_probe_steps))
for name, rs in rows.items():
    med = {k: round(st.median(r[k] for r in rs), 2) for k in rs[0]}
    per_step = st.median((r["verify"]) / r["steps"] for r in rs)
    other = st.median((r["total"] - r["verify"] - r["draft"] - r["sample"]) for r in rs)
    print(name, med, "verify/step", round(per_step, 3), "other ms", round(other, 2))
