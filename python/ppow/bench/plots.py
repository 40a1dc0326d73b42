"""PNG plots from a report dict: speedup by category, τ by window k, acceptance by position."""
from __future__ import annotations

import os

from matplotlib.ticker import MaxNLocator


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def speedup_by_category(report, path):
    plt = _plt()
    systems = [s for s in report["systems"] if s["baseline"] is not None]
    cats = sorted({c for s in systems for c in report["results"][s["name"]]["by_category"]}) + ["all"]
    fig, ax = plt.subplots(figsize=(min(14, 4 + 0.1 * len(cats) * max(1, len(systems))), 4.5))
    width = 0.8 / max(1, len(systems))
    for j, s in enumerate(systems):
        res = report["results"][s["name"]]
        xs, med, lo, hi = [], [], [], []
        for i, c in enumerate(cats):
            sp = (res["overall"] if c == "all" else res["by_category"].get(c, {})).get("speedup")
            if sp:
                xs.append(i - 0.4 + width * (j + 0.5))
                med.append(sp["median"])
                lo.append(sp["median"] - sp["q1"])
                hi.append(sp["q3"] - sp["median"])
        ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, label=s["name"])
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels(cats, rotation=30, ha="right")
    ax.set_ylabel("speedup vs own plain (median, IQR)")
    ax.set_title("Speedup by category")
    if systems:  # below the axes: bars fill the plot area
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=min(3, len(systems)))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def tau_by_k(report, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    lines = {}
    for s in report["systems"]:
        tau = report["results"][s["name"]]["overall"]["tau_pooled"]
        if s["baseline"] is None or tau is None:
            continue
        key = f"{s['family']} {s['drafter']}"
        if s["k"] is not None:
            lines.setdefault(key, []).append((s["k"], tau))
        else:  # auto / HF default schedule: no single k, drawn as a level
            ax.axhline(tau, ls="--", lw=1, color="grey")
            ax.annotate(s["name"], (0.01, tau), xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
    for key, pts in lines.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
    ax.set_xlabel("draft window k")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("τ (tokens per target step, pooled)")
    ax.set_title("τ by window")
    if lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def acceptance_by_position(report, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for s in report["systems"]:
        rate = report["results"][s["name"]]["overall"]["acceptance_by_position"]["rate"]
        pts = [(i + 1, r) for i, r in enumerate(rate) if r is not None]
        if s["baseline"] is not None and pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s["name"])
    ax.set_xlabel("draft position")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accepted / drafted (pooled)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Acceptance by draft position")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(outdir, report) -> list:
    out = []
    for name, fn in (("speedup_by_category.png", speedup_by_category), ("tau_by_k.png", tau_by_k),
                     ("acceptance_by_position.png", acceptance_by_position)):
        fn(report, os.path.join(outdir, name))
        out.append(name)
    return out
