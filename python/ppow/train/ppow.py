"""Stage 2: PPOW, window-level policy optimisation of the drafter.

One step:
 1. candidates: start positions t in the cache where a k_max window is exactly verifiable (the target's
    tokens after any accepted prefix are cached: greedy verification on the cached trajectory is exact);
 2. Adaptive Divergence-Aware Windowing (windowing.py): score candidates with the current drafter
    (teacher-forced on the trajectory), keep the top fraction, pick each window's length k;
 3. rollouts: for each kept window, G windows sampled from the current drafter (the group), with its
    last ctx_len tokens of context (short contexts keep CPU rollouts cheap);
 4. greedy verification against the cached target tokens -> accepted length a;
 5. rewards (rewards.py): Cost-Aware Speedup + Distribution-Based Proximity; group-relative advantages;
 6. update: PPO-clipped objective with per-token ratios against the rollout policy (every token of a
    window shares its window's advantage; by default only the decisive tokens — accepted prefix and first
    rejection — carry it, since later tokens did not affect the outcome), plus a KL penalty to the frozen
    stage-1 (KD) drafter (--anchor reference) or a KL to the target's cached top-k on the windows'
    trajectory positions, teacher-forced (--anchor target), for ppo_epochs passes over the rollouts.

That is `--estimator sampled` (the paper's GRPO/PPO form; the only one that handles --exact-target and
sampled verification). The default `--estimator expected` (expected.py) computes the same window
rewards in closed form for every window start of a chunk from one teacher-forced pass.
"""

from dataclasses import dataclass

import torch

from . import drafters
from . import expected
from . import rewards as R
from . import windowing as W
from .common import step_generator


def window_data(cache, vocab, starts, K, ctx_len, kind=drafters.STANDALONE):
    """Contexts (kind.contexts), trajectory tokens (draft labels, -100 outside the draft vocab) [B,K],
    trajectory tokens as draft inputs [B,K], target top-k (draft ids, probs) [B,K,topk]."""
    contexts = kind.contexts(cache, vocab, starts, ctx_len)
    idx = starts[:, None] + torch.arange(K)[None, :]
    traj = cache.greedy[idx]
    p_ids, p = vocab.project_topk(cache.topk_ids[idx], cache.topk_probs[idx])
    return contexts, vocab.to_draft_label(traj), vocab.to_draft_input(traj), p_ids, p


def cost_from_args(args):
    if getattr(args, "cost_profile", None):
        return R.CostModel.from_json(args.cost_profile)
    return R.CostModel.linear(args.target_ms_1, args.target_ms_per_token, args.draft_ms)


def repeat_groups(x, G):
    if isinstance(x, list):
        return [c for c in x for _ in range(G)]
    return x.repeat_interleave(G, dim=0)


@torch.no_grad()
def choose_windows(model, cache, vocab, cand, args, cost):
    """Select windows and their lengths. Returns (starts, k [B], score or None)."""
    B = args.windows
    if not args.adaptive_window:
        return cand[:B], torch.full((len(cand[:B]),), args.k, dtype=torch.long), None
    K = args.k_max
    kind = drafters.of(model)
    contexts, traj, traj_in, p_ids, p = window_data(cache, vocab, cand, K, args.ctx_len, kind)
    q = torch.softmax(kind.forward_windows(model, contexts, traj_in), -1).cpu()
    q_at = q.gather(-1, p_ids) * (p > 0)
    score = W.window_score(p, q_at, args.score_positions)
    sel = W.select_windows(score, args.window_keep, n_keep=min(B, len(cand)))
    s = q.gather(-1, traj.clamp_min(0)[..., None]).squeeze(-1) * (traj >= 0)
    k = W.adaptive_k(s[sel], args.k_min, args.k_max, args.adaptive_k, cost)
    return cand[sel], k, score[sel]


@torch.no_grad()
def exact_target_window(target, cache, vocab, t, draft_row, topk):
    """Run the target on (whole cached sequence up to t) + drafted tokens. Returns, per window position:
    the target's greedy token (draft label ids), its top-k (draft ids, probs) and p(drafted token)."""
    s = int(cache.seq_start[cache.seq_of[t]])
    K = len(draft_row)
    seq = cache.tokens[s:t + 1].tolist() + vocab.to_target(draft_row).tolist()
    lg = target.logits(seq)[t - s:t - s + K].float()
    probs = torch.softmax(lg, -1)
    tp, ti = probs.topk(topk, -1)
    p_ids, p = vocab.project_topk(ti, tp)
    p_draft = probs.gather(1, vocab.to_target(draft_row)[:, None]).squeeze(1)
    return vocab.to_draft_label(lg.argmax(-1)), p_ids, p, p_draft


@dataclass
class Windows:
    """One batch of rolled-out windows, N = starts x group size, group-major; K = the longest window."""
    contexts: list          # what each window's drafter conditioned on (drafters.py kind.contexts)
    toks: torch.Tensor      # [N,K] drafted tokens (draft ids)
    traj: torch.Tensor      # [N,K] the target's tokens there (draft labels, -100 outside the draft vocab)
    k: torch.Tensor         # [N] window length
    a: torch.Tensor         # [N] accepted length
    reward: torch.Tensor    # [N] total reward
    r_speed: torch.Tensor   # [N] Cost-Aware Speedup part (or a + 1 with it off)
    r_prox: torch.Tensor    # [N] Distribution-Based Proximity part
    adv: torch.Tensor       # [N] group-relative advantage
    mask: torch.Tensor      # [N,K] positions that carry the advantage (--pg-positions)


@torch.no_grad()
def rollout(model, cache, vocab, starts, k, args, cost, generator, target=None):
    """G sampled windows per start; verification; rewards; advantages -> Windows.

    Default: greedy verification against the cached trajectory (exact under greedy verification).
    With args.exact_target the target is run on every drafted window (slow; needed for sampled
    verification, where an accepted token may leave the cached trajectory): args.verify "greedy" accepts
    while the draft equals the target's argmax, "sampled" accepts position j with prob min(1, p(d)/q(d)).
    """
    G = args.group_size
    K = int(k.max()) if not args.adaptive_window else args.k_max
    kind = drafters.of(model)
    contexts, traj, _, p_ids, p = window_data(cache, vocab, starts, K, args.ctx_len, kind)
    ctx_g, traj_g, p_ids_g, p_g, k_g = (repeat_groups(x, G) for x in (contexts, traj, p_ids, p, k))
    exact = getattr(args, "exact_target", False)
    verify = getattr(args, "verify", "greedy")
    if verify == "sampled" and not exact:
        raise ValueError("--verify sampled needs --exact-target (accepted tokens may leave the cached trajectory)")
    toks, logq, q_at = kind.draft(model, ctx_g, K, greedy=False, temperature=args.temperature, generator=generator,
                               gather_ids=p_ids_g)
    if exact:
        if target is None:
            raise ValueError("--exact-target needs the target (--target)")
        starts_g = repeat_groups(starts, G)
        rows = [exact_target_window(target, cache, vocab, int(t), toks[i], p_g.shape[-1])
                for i, t in enumerate(starts_g.tolist())]
        traj_g = torch.stack([r[0] for r in rows])
        p_ids_g = torch.stack([r[1] for r in rows])
        p_g = torch.stack([r[2] for r in rows])
        p_draft = torch.stack([r[3] for r in rows])
        # drafter probabilities at the exact target's top-k (one teacher-forced pass over the drafts)
        q_full = torch.softmax(kind.forward_windows(model, ctx_g, toks), -1).cpu()
        q_at = q_full.gather(-1, p_ids_g)
    q_at = q_at * (p_g > 0)  # out-of-draft-vocab target mass counts as unmatched
    if verify == "sampled":
        q_draft = torch.exp(logq) if args.temperature == 1.0 else q_full.gather(-1, toks[..., None]).squeeze(-1)
        u = torch.rand(toks.shape, generator=generator)
        ok = u < torch.clamp(p_draft / q_draft.clamp_min(1e-12), max=1.0)
        j = torch.arange(K)[None, :]
        a = torch.cumprod((ok & (j < k_g[:, None])).long(), 1).sum(1)
    else:
        a = R.accepted_length(toks, traj_g, k_g)
    reward, parts = R.window_rewards(a, k_g, p_g, q_at, cost, speedup=args.speedup_reward,
                                     proximity=args.proximity, speedup_coef=args.speedup_coef,
                                     proximity_coef=args.proximity_coef)
    adv = R.group_advantages(reward, G, args.adv_norm)
    j = torch.arange(K)[None, :]
    pos_mask = parts["decisive"] if args.pg_positions == "decisive" else (j < k_g[:, None])
    return Windows(contexts=ctx_g, toks=toks, traj=traj_g, k=k_g, a=a, reward=reward, r_speed=parts["speed"],
                   r_prox=parts["prox"], adv=adv, mask=pos_mask)


def ppo_loss(logits, old_logp, ref_logits, toks, adv, mask, clip=0.2, kl_coef=0.05, temperature=1.0):
    """PPO-clipped surrogate with per-token ratios + KL(pi || pi_ref) on the same tokens' positions.

    logits, ref_logits [N,K,V]; old_logp, toks, mask [N,K]; adv [N]. clip <= 0 disables clipping.
    """
    logp_all = torch.log_softmax(logits / temperature, -1)
    logp = logp_all.gather(-1, toks[..., None]).squeeze(-1)
    ratio = torch.exp(logp - old_logp)
    A = adv[:, None]
    surr = ratio * A
    if clip > 0:
        surr = torch.minimum(surr, ratio.clamp(1 - clip, 1 + clip) * A)
    m = mask.float()
    n = m.sum().clamp_min(1)
    pg = -(surr * m).sum() / n
    kl = torch.zeros((), device=logits.device)
    if kl_coef > 0 and ref_logits is not None:
        lp = torch.log_softmax(logits, -1)
        lr = torch.log_softmax(ref_logits, -1)
        kl = ((lp.exp() * (lp - lr)).sum(-1) * m).sum() / n
    loss = pg + kl_coef * kl
    clipfrac = (((ratio - 1).abs() > clip).float() * m).sum() / n if clip > 0 else torch.zeros(())
    return loss, {"pg": pg.detach(), "kl_ref": kl.detach(), "clipfrac": clipfrac.detach(),
                  "ratio_mean": ((ratio * m).sum() / n).detach()}


def n_candidates(args):
    """Candidates scored per step: windows / keep with adaptive windowing (keep 1.0: no selection)."""
    if not args.adaptive_window:
        return args.windows
    return max(args.windows, int(round(args.windows / args.window_keep)))


def anchor_kl(model, cache, vocab, starts, k, args):
    """The target anchor of the sampled estimator: KL(target's cached top-k || drafter) on the
    trajectory positions j < k of each selected window, teacher-forced (one pass per window, not per
    group member; on the trajectory the cached distribution is the target's)."""
    kind = drafters.of(model)
    K = int(k.max())
    contexts, _, traj_in, p_ids, p = window_data(cache, vocab, starts, K, args.ctx_len, kind)
    dev = next(model.parameters()).device
    lq = torch.log_softmax(kind.forward_windows(model, contexts, traj_in).float(), -1)
    in_win = torch.arange(K, device=dev)[None, :] < k.to(dev)[:, None]
    return expected.target_kl(lq.gather(-1, p_ids.to(dev)), p.to(dev), in_win)


def make_step_fn(model, ref, cache, vocab, args, rank=0, target=None):
    cost = cost_from_args(args)
    if getattr(args, "estimator", "sampled") == "expected":
        if target is not None:
            raise ValueError("--estimator expected verifies on the cached trajectory: --exact-target needs "
                             "--estimator sampled")
        return expected.make_step_fn(model, ref, cache, vocab, args, cost, rank)
    target_anchor = getattr(args, "anchor", "reference") == "target"
    K0 = args.k_max if args.adaptive_window else args.k
    all_starts = cache.window_starts(K0, continuation_only=not args.all_positions)
    if len(all_starts) == 0:
        raise ValueError(f"the cache has no position with a verifiable {K0}-token window")
    dev = next(model.parameters()).device
    fw = drafters.of(model).forward_windows

    def step_fn(tr, step):
        g = step_generator(args.seed, step, rank)
        cand = all_starts[torch.randint(len(all_starts), (n_candidates(args),), generator=g)]
        model.eval()
        starts, k, score = choose_windows(model, cache, vocab, cand, args, cost)
        ro = rollout(model, cache, vocab, starts, k, args, cost, g, target)
        model.train()
        toks, mask, adv = ro.toks.to(dev), ro.mask.to(dev), ro.adv.to(dev)
        with torch.no_grad():
            old_logits = fw(model, ro.contexts, toks)
            old_logp = torch.log_softmax(old_logits / args.temperature, -1).gather(-1, toks[..., None]).squeeze(-1)
            ref_logits = fw(ref, ro.contexts, toks) if args.kl_coef > 0 and not target_anchor else None
        metrics = {}
        for _ in range(args.ppo_epochs):
            logits = fw(tr.ddp, ro.contexts, toks)
            loss, metrics = ppo_loss(logits, old_logp, ref_logits, toks, adv, mask, args.clip,
                                     0.0 if target_anchor else args.kl_coef, args.temperature)
            if target_anchor and args.kl_coef > 0:
                kl_t = anchor_kl(tr.ddp, cache, vocab, starts, k, args)
                loss = loss + args.kl_coef * kl_t
                metrics["kl_target"] = kl_t.detach()
                del metrics["kl_ref"]
            if args.kd_coef > 0:
                # optional anchor: teacher-forced CE on the selected windows' trajectory
                ctx = ro.contexts[:: args.group_size]
                traj = ro.traj[:: args.group_size].to(dev)
                tl = fw(tr.ddp, ctx, traj.clamp_min(0))
                ce = torch.nn.functional.cross_entropy(tl.reshape(-1, tl.shape[-1]), traj.reshape(-1), ignore_index=-100)
                loss = loss + args.kd_coef * ce
                metrics["kd_ce"] = ce.detach()
            metrics["grad_norm"] = tr.update(loss)
        metrics.update(
            reward=ro.reward.mean(), r_speed=ro.r_speed.mean(), r_prox=ro.r_prox.mean(),
            accepted=ro.a.float().mean(), k_mean=ro.k.float().mean(),
            window_score=score.mean() if score is not None else 0.0, loss=loss.detach())
        return metrics

    return step_fn
