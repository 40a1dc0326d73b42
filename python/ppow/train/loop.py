"""The training loop shared by the KD and PPOW stages: resume, LR schedule, optimizer steps with NaN
guards, DDP, checkpoints, JSONL metrics and tqdm.

Layout of a run dir OUT:
  OUT/ckpt/      latest checkpoint with trainer state (resume from here)
  OUT/final/     the finished drafter, weights only (convert / eval / --init this one)
  OUT/metrics.jsonl
"""

import json
import os
import shutil
import time

import torch

from . import checkpoint as C
from .common import MetricsLog, check_finite, lr_at, progress
from .vocab import load_draft_vocab, same_vocab


def resolve_ckpt(path):
    """A checkpoint dir from a run dir or a checkpoint dir (OUT, OUT/final or OUT/ckpt)."""
    for p in (path, os.path.join(path, "final"), os.path.join(path, "ckpt"), os.path.join(path, "ckpt.old")):
        if os.path.exists(os.path.join(p, "config.json")):
            return p
    raise FileNotFoundError(f"no drafter checkpoint (config.json) in {path}, {path}/final or {path}/ckpt")


def resume_source(out):
    """The checkpoint a `--resume` of run dir `out` continues (OUT/ckpt, else the OUT/ckpt.old a save
    interrupted between its renames left), or None."""
    ckpt = os.path.join(out, "ckpt")
    for src in (ckpt, ckpt + ".old"):
        if C.has_trainer_state(src):
            return src
    return None


class Trainer:
    """Owns the optimizer; step functions call .update(loss) (PPO takes several updates per step)."""

    def __init__(self, model, args, rank=0, world=1, device="cpu"):
        self.model, self.args, self.rank, self.world, self.device = model, args, rank, world, device
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
        self.ddp = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # no buffer broadcast: a feature drafter's only buffers are its frozen borrowed embeddings
            self.ddp = DDP(model, device_ids=[torch.device(device).index] if "cuda" in device else None,
                           broadcast_buffers=False)
        self.step = 0
        self.lr = args.lr

    def update(self, loss):
        check_finite(self.step, loss=loss.detach())
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(self.device).type, enabled=False):  # backward in the forward's dtypes
            loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip if self.args.grad_clip > 0 else float("inf"))
        check_finite(self.step, grad_norm=gn)
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        self.opt.step()
        return float(gn)


def run(args, model, vocab, info, step_fn, stage, rank=0, world=1, device="cpu", eval_fn=None):
    """Run args.steps steps of step_fn(trainer, step) -> metrics dict; resumable; returns final dir.

    eval_fn(model) -> dict (a held-out evaluation) runs every args.eval_every steps and on the final
    drafter; its CPU time is not counted against --cpu-budget (it measures, it does not train).
    With args.early_stop P, the run stops once P evaluations in a row brought no gain of
    args.early_stop_eps over the best held-out tau; OUT/best holds the best drafter so far and becomes
    OUT/final (the plateau's drafter, not the last one)."""
    out = args.out
    os.makedirs(out, exist_ok=True)
    ckpt = os.path.join(out, "ckpt")
    tr = Trainer(model, args, rank, world, device)
    start, cpu_used = 0, 0.0
    plateau = {"best": None, "best_step": None, "since": 0}  # the held-out curve's state, resumed with the run
    if args.resume:
        src = resume_source(out)
        if src is not None:
            saved = load_draft_vocab(src, vocab.target_vocab_size)
            if not same_vocab(saved, vocab):  # weights belong to their d2t: never pair them with another
                raise ValueError(f"{src} was trained on another draft vocabulary ({saved.size} tokens) than this run's "
                                 f"({vocab.size}); resume with the flags it was started with, or use another -o")
            C.load_weights(model, src)
            old_info = C.read_info(src)
            start, _, _ = C.load_trainer_state(src, tr.opt)
            cpu_used = float(old_info.get("cpu_seconds", 0.0))
            plateau.update(old_info.get("heldout", {}))
            changed = {k: (old_info.get("args", {}).get(k), v) for k, v in info.get("args", {}).items()
                       if k not in ("resume", "stop_after", "steps", "out") and old_info.get("args", {}).get(k) != v}
            if changed and rank == 0:
                print(f"[{stage}] warning: resuming with changed arguments {changed}")
            if rank == 0:
                print(f"[{stage}] resumed from {src} at step {start}")
    log = MetricsLog(os.path.join(out, "metrics.jsonl"), enabled=rank == 0)
    bar = progress(args.steps, stage, initial=start, enabled=(rank == 0 and not args.quiet))
    stop = args.steps if not args.stop_after else min(args.steps, start + args.stop_after)

    def save(step):
        if rank == 0:
            C.save_checkpoint(ckpt, model, vocab, dict(info, step=step, cpu_seconds=round(cpu_used, 2), heldout=plateau),
                              optimizer=tr.opt, step=step)

    # bf16 autocast: matmuls in bfloat16, softmax/log-softmax and reductions in fp32 (torch's autocast policy)
    amp = torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                         enabled=getattr(args, "precision", "fp32") == "bf16")
    # CPU-seconds of the steps (all threads of this process; carried across resumes in the checkpoint info)
    budget = getattr(args, "cpu_budget", 0) or 0
    patience = getattr(args, "early_stop", 0) or 0
    if patience and world > 1:  # only rank 0 evaluates; the other ranks would not know when to stop
        raise ValueError("--early-stop runs in one process (not under torchrun)")
    best_dir = os.path.join(out, "best")

    def heldout(step):
        """Evaluate; True when the curve has plateaued (--early-stop evaluations without a gain)."""
        if eval_fn is None:
            return False
        t0 = time.time()
        res = eval_fn(model)
        tau = next(v for k, v in res.items() if k.startswith("tau"))
        gain = plateau["best"] is None or tau > plateau["best"] + (getattr(args, "early_stop_eps", 0.0) or 0.0)
        if gain:
            plateau.update(best=tau, best_step=step, since=0)
            if rank == 0 and patience:
                C.save_checkpoint(best_dir, model, vocab, dict(info, step=step, cpu_seconds=round(cpu_used, 2), heldout=dict(plateau)))
        else:
            plateau["since"] += 1
        log.log(stage="heldout", of=stage, step=step, cpu_seconds=round(cpu_used, 2), eval_s=round(time.time() - t0, 1),
                best=plateau["best"], best_step=plateau["best_step"], **res)
        if rank == 0 and not args.quiet:
            print(f"[{stage}] step {step}: held-out " + ", ".join(f"{k} {v}" for k, v in res.items() if k.startswith("tau")) +
                  f" (best {plateau['best']} at step {plateau['best_step']})")
        return bool(patience) and plateau["since"] >= patience

    every = getattr(args, "eval_every", 0) or 0
    plateaued = bool(patience) and plateau["since"] >= patience  # a resumed run that had already plateaued
    if plateaued:
        stop = start
    elif every and start == 0:
        heldout(0)  # the curve starts at the initial drafter (with --init, the start may stay the best)
    for step in range(start, stop):
        if budget and cpu_used >= budget:
            stop = step  # the budget is spent: this is the final drafter
            break
        c0 = time.process_time()
        tr.step = step
        tr.lr = lr_at(step, args.steps, args.lr, args.warmup, args.schedule)
        model.train()
        with amp:
            metrics = step_fn(tr, step)
        metrics = {k: (float(v) if torch.is_tensor(v) else v) for k, v in metrics.items()}
        cpu_used += time.process_time() - c0
        log.log(stage=stage, step=step + 1, lr=tr.lr, cpu_seconds=round(cpu_used, 2), **metrics)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if isinstance(v, float)}, refresh=False)
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < stop:
            save(step + 1)
        if every and (step + 1) % every == 0 and step + 1 < stop and heldout(step + 1):
            stop = step + 1  # the held-out curve has plateaued
            plateaued = True
            break
    if bar is not None:
        bar.close()
    save(stop)
    if not plateaued:
        plateaued = heldout(stop)
    final = os.path.join(out, "final")
    done = stop == args.steps or (budget and cpu_used >= budget) or plateaued
    if done and rank == 0:
        if patience and os.path.isdir(best_dir):  # the plateau's best drafter is the result
            tmp = final + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(best_dir, tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        else:
            C.save_checkpoint(final, model, vocab, dict(info, step=stop, cpu_seconds=round(cpu_used, 2)))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return final if done else ckpt
