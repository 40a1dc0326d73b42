"""Small shared pieces: distributed setup, step-derived RNG, LR schedule, metrics log, NaN guard."""

import json
import math
import os
import time

import torch

from .cache_files import NonFiniteError  # noqa: F401 (raised here; defined torch-free for the CLI)


def check_finite(step, **values):
    """Stop with a clear error when a loss or gradient norm is NaN/inf (training would silently rot)."""
    bad = {k: float(v) for k, v in values.items() if not math.isfinite(float(v))}
    if bad:
        raise NonFiniteError(
            f"non-finite value(s) at step {step}: {bad}. Training stopped; the last checkpoint is intact. "
            "Lower --lr, raise --grad-clip, or check the cache for corrupt probabilities.")


def dist_setup():
    """(rank, world, device) — torch.distributed only when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank = dist.get_rank()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return rank, world, f"cuda:{local}"
        return rank, world, "cpu"
    return 0, 1, ("cuda" if torch.cuda.is_available() else "cpu")


def dist_cleanup(world):
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def step_generator(seed, step, rank=0, stream=0):
    """A torch.Generator fixed by (seed, step, rank, stream): the data position and sampling noise of a
    step depend on nothing else, so a resumed run draws exactly what the uninterrupted one would have."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step * 7919 + rank * 104_729 + stream * 15_485_863) % (2**63 - 1))
    return g


def lr_at(step, total, lr, warmup, schedule="cosine", min_ratio=0.1):
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    prog = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * prog)))


class MetricsLog:
    """Append-only JSONL of every metric (rank 0 only)."""

    def __init__(self, path, enabled=True):
        self.path, self.enabled = path, enabled
        self.t0 = time.time()
        if enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def log(self, **kv):
        if not self.enabled:
            return
        kv = {k: (float(v) if torch.is_tensor(v) else v) for k, v in kv.items()}
        kv["time_s"] = round(time.time() - self.t0, 3)
        with open(self.path, "a") as f:
            f.write(json.dumps(kv) + "\n")


def progress(total, desc, initial=0, enabled=True):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True)
