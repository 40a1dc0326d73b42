"""Where does each objective put its gradient? PPOW's expected window objective against KD, one batch.

Issue 23 asks for the measured cause where PPOW does not beat KD. Both objectives move the drafter
through its output distributions; this tool runs ONE update's loss of each (the exact step functions
`ppow-train ppow --estimator expected` and `ppow-train kd` use, on the same cache, from the same
drafter), differentiates it, and reports how the gradient with respect to the drafter's logits is
spread over positions:

  - the share of it on positions the drafter misses (its argmax is not the target's token): what a
    window loses on, so what an objective must fix to lengthen windows;
  - the share on each unrolled step (window position 1, 2, ...);
  - its mean of s = the drafter's probability of the target's token, weighted by gradient norm;
  - the cosine between the two objectives' parameter gradients on the same chunks (KD's loss on the
    chunks the PPOW step drew), beside KD against itself on other chunks (the batch-to-batch spread).

Feature (EAGLE-3) drafters only (both shipped targets use them). Example (the issue-23 arms' flags):

  python tools/objective-weights.py --init RUN/best --cache /work/data/gemma-v1 --allow-incomplete-cache \
      --cost-profile python/ppow/train/profiles/h200-gemma3-270m.json --ppow-args "--k-min 1 --k-max 8" \
      --kd-args "--ttt-steps 3 --ttt-decay 0.8 --batch-size 8 --chunk-len 256" --batches 4
"""

import argparse
import json
import shlex

import torch

from ppow.train import checkpoint as C
from ppow.train import expected, kd, ppow
from ppow.train.cli import _feature_target, _fill_defaults, _load_cache, build_parser
from ppow.train.common import step_generator
from ppow.train.drafters import check_cache
from ppow.train.feature_model import read_target


class KeepLogits(torch.nn.Module):
    """Wraps the drafter: keeps the logits of its last call (one tensor per unrolled step) with their
    gradients, so a loss's gradient with respect to every position's logits can be read after backward."""

    def __init__(self, model):
        super().__init__()
        self.model, self.kind, self.logits = model, model.kind, None

    def forward(self, feats, toks, key_mask):
        out = self.model(feats, toks, key_mask)
        for x in out:
            if x.requires_grad:  # not in a step function's no-grad selection pass
                x.retain_grad()
        self.logits = list(out)
        return out


class Backward:
    """The `tr` a step function is given: backward only, no optimizer step."""

    def __init__(self, model):
        self.ddp, self.device = model, "cpu"

    def update(self, loss):
        loss.backward()
        return 0.0


def spread(logits, labels):
    """Per-position logits-gradient norms of a pass -> dict of shares. labels [S,B,T] (-100: none)."""
    norms, miss, steps, s_all = [], [], [], []
    for i, x in enumerate(logits):
        if x.grad is None:
            continue
        g = x.grad.float().norm(dim=-1)  # [B,T]
        lab = labels[i]
        ok = lab >= 0
        q = torch.softmax(x.detach().float(), -1)
        s = q.gather(-1, lab.clamp_min(0)[..., None]).squeeze(-1)
        am = x.detach().argmax(-1)
        keep = ok & (g > 0)
        norms.append(g[keep])
        miss.append((am != lab)[keep])
        steps.append(torch.full_like(g[keep], i))
        s_all.append(s[keep])
    g, m, st, s = (torch.cat(v) for v in (norms, miss, steps, s_all))
    tot = float(g.sum())
    return dict(positions=int(len(g)), miss_fraction=float(m.float().mean()),
                grad_share_on_misses=float(g[m].sum()) / tot,
                grad_share_by_step=[round(float(g[st == i].sum()) / tot, 4) for i in range(int(st.max()) + 1)],
                grad_weighted_mean_s=float((g * s).sum()) / tot, mean_s=float(s.mean()))


def param_grad(model):
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                      for p in model.parameters() if p.requires_grad])


def cosine(x, y):
    return round(float(torch.nn.functional.cosine_similarity(x, y, dim=0)), 4)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", required=True, help="feature drafter checkpoint (both objectives start here)")
    ap.add_argument("--cache", required=True, action="append")
    ap.add_argument("--allow-incomplete-cache", action="store_true")
    ap.add_argument("--target", default=None)
    ap.add_argument("--cost-profile", required=True)
    ap.add_argument("--ppow-args", default="", help="extra `ppow-train ppow` flags (as the arm used them)")
    ap.add_argument("--kd-args", default="", help="extra `ppow-train kd` flags (as the arm used them)")
    ap.add_argument("--batches", type=int, default=4, help="steps (seeds) to average over")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", default=None, help="write the report as JSON here too")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    common = [x for c in a.cache for x in ("--cache", c)] + (["--allow-incomplete-cache"] if a.allow_incomplete_cache else [])
    common += ["--target", a.target] if a.target else []
    pa = build_parser().parse_args(["ppow", *common, "--init", a.init, "--cost-profile", a.cost_profile, "-o", "/nonexistent",
                                    *shlex.split(a.ppow_args)])
    ka = build_parser().parse_args(["kd", *common, "--init", a.init, "-o", "/nonexistent", *shlex.split(a.kd_args)])
    for x in (pa, ka):
        _fill_defaults(x)
    cache = _load_cache(pa)
    init = C.read_info(a.init)
    target = read_target(_feature_target(pa, cache, init.get("target_path")))  # names, paths, checked
    model, vocab, _ = C.load_drafter(a.init, cache.meta["target"]["vocab_size"], target=target)
    if model.kind != "feature":
        raise SystemExit("objective-weights: feature drafters only")
    check_cache(model, cache)
    if pa.ctx_len is None:
        pa.ctx_len = 0
    cost = ppow.cost_from_args(pa)
    wrap = KeepLogits(model)
    tr = Backward(wrap)
    ppow_fn = expected.make_step_fn(wrap, None, cache, vocab, pa, cost)

    rows = cache.scored
    K = pa.k_max if pa.adaptive_window else pa.k  # the unrolled steps a PPOW pass draws its windows for
    valid_ppow = expected.valid_starts(cache, K, pa.all_positions, True)

    def kd_grad(starts, ends):
        """kd.feature_kd_loss's batch and loss on these chunks, kept open for the labels: (spread, grad)."""
        model.zero_grad(set_to_none=True)
        feats, key_mask, toks, labels, p_ids, p, valid = kd.ttt_batch(cache, vocab, starts, ends, ka.ttt_steps, rows)
        logits = wrap(feats, list(toks), key_mask)
        loss, _ = kd.ttt_loss(logits, valid, labels, p_ids, p, ka.ce_coef, ka.kl_coef, ka.ttt_decay)
        loss.backward()
        return spread(wrap.logits, torch.where(valid, labels, torch.full_like(labels, -100))), param_grad(model)

    out = {"init": a.init, "cache": a.cache, "cost_profile": a.cost_profile, "ppow_args": a.ppow_args,
           "kd_args": a.kd_args, "batches": []}
    for step in range(a.batches):
        # PPOW (expected): the step function's own loss; the labels of its gradient pass rebuilt from the
        # same generator (feature_batch draws the chunks first, as the step function does)
        model.zero_grad(set_to_none=True)
        m = ppow_fn(tr, step)
        batch = expected.feature_batch(cache, vocab, valid_ppow, K, pa, step_generator(pa.seed, step, 0), "cpu")
        S = len(wrap.logits)
        pp = spread(wrap.logits, batch["labels"][:S])
        pp.update(k_mean=float(m["k_mean"]), windows=int(m["windows"]), windows_scored=int(m["windows_scored"]),
                  expected_accepted=float(m["accepted"]))
        gp = param_grad(model)

        # KD: kd.feature_kd_loss's chunks (the same generator) and loss
        pk, gk = kd_grad(*kd.feature_chunks(cache, ka.batch_size, ka.chunk_len, step_generator(ka.seed, step, 0), rows))
        # KD's loss on the chunks the PPOW step drew (same positions, all of them): the direction KD
        # would take on that data; KD on its own batch against it is the batch-to-batch reference
        same = kd.feature_chunks(cache, expected.n_chunks(pa, K, cache, True), pa.chunk_len,
                                 step_generator(pa.seed, step, 0), valid_ppow)
        _, gs = kd_grad(*same)
        out["batches"].append(dict(step=step, ppow_expected=pp, kd=pk, cosine_ppow_vs_kd_same_chunks=cosine(gp, gs),
                                   cosine_kd_vs_kd_other_chunks=cosine(gk, gs), cosine_ppow_vs_kd=cosine(gp, gk)))
        print(json.dumps(out["batches"][-1]), flush=True)

    def mean(key, sub):
        return sum(b[key][sub] for b in out["batches"]) / len(out["batches"])

    out["mean"] = {obj: {sub: round(mean(obj, sub), 4) for sub in ("miss_fraction", "grad_share_on_misses",
                                                                   "grad_weighted_mean_s", "mean_s")}
                   for obj in ("ppow_expected", "kd")}
    for c in ("cosine_ppow_vs_kd_same_chunks", "cosine_kd_vs_kd_other_chunks", "cosine_ppow_vs_kd"):
        out["mean"][c] = round(sum(b[c] for b in out["batches"]) / len(out["batches"]), 4)
    print(json.dumps(out["mean"], indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
