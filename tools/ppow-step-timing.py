"""Seconds per update of KD, PPOW expected and PPOW sampled for a Gemma-3-270M-sized feature drafter
(hidden 640, draft vocabulary 8,192, the target's 262,144-row embedding) on synthetic data: random
features and tokens, because the cost of a step does not depend on what it learns. Needs neither a
cache nor the target GGUF (so it runs on a lent GPU machine with torch alone: PYTHONPATH=python).

  python tools/ppow-step-timing.py --device cuda --steps 12 --seqs 128 -o timing.json

One JSON line per kind of update (median wall and process CPU seconds over the steps after the first
two), then the summary; bf16 autocast as the training CLI's --precision bf16."""
import argparse
import json
import time

import torch
from ppow.train import cli, drafters, expected as X, ppow
from ppow.train import feature_model as FM
from ppow.train.cache import Cache
from ppow.train.kd import build_vocab
from ppow.train.loop import Trainer

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
ap.add_argument("--steps", type=int, default=8, help="updates per kind (the first two are warm-up)")
ap.add_argument("--seqs", type=int, default=128, help="synthetic sequences of 256 positions")
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("-o", "--out", default=None, help="summary JSON")
opt = ap.parse_args()
if opt.threads:
    torch.set_num_threads(opt.threads)
dev, steps, n_seq = opt.device, max(3, opt.steps), opt.seqs
H, Vt, L, PROMPT, NEW, TOPK = 640, 262144, 256, 64, 192, 16
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
N = n_seq * L
tokens = torch.randint(4, 20000, (N,), generator=g)
greedy = torch.cat([tokens[1:], tokens[:1]])  # on the trajectory everywhere inside a sequence
topk_ids = torch.randint(4, 20000, (N, TOPK), generator=g)
topk_ids[:, 0] = greedy
topk_probs = torch.softmax(torch.randn(N, TOPK, generator=g) * 2, -1).sort(-1, descending=True).values
meta = {"target": {"vocab_size": Vt, "sha256": "synthetic", "bos": 2, "eos": 1, "unk": 3, "pad": 0},
        "settings": {"layers": [2, 9, 15], "topk": TOPK}}
cache = Cache.from_tensors(dict(tokens=tokens, greedy=greedy, topk_ids=topk_ids, topk_probs=topk_probs,
                                seq_len=torch.full((n_seq,), L), prompt_len=torch.full((n_seq,), PROMPT),
                                hidden=(torch.randn(N, 3, H, generator=g) * 3).bfloat16()), meta)
vocab = build_vocab(cache, 8192)
cfg = FM.make_config(hidden_size=H, target_hidden_size=H, target_layers=[2, 9, 15], target_vocab_size=Vt,
                     draft_vocab_size=vocab.size, num_attention_heads=4, intermediate_size=3 * H)
target = dict(embed=torch.randn(Vt, H) * 0.05, output=torch.randn(Vt, H) * 0.05)


def fresh():
    torch.manual_seed(0)
    m = FM.FeatureDrafter(cfg)
    m.set_embeddings(target["embed"])
    m.set_d2t(vocab.d2t)
    FM.init_from_target(m, target, vocab.d2t)
    return m.to(dev)


def parse(stage, extra):
    base = ["--cache", "x", "-o", "y"] + (["--init", "z"] if stage == "ppow" else [])
    a = cli.build_parser().parse_args([stage] + base + extra)
    cli._fill_defaults(a)
    a.ctx_len = 0
    return a


def timed(name, args, make_step):
    m = fresh()
    tr = Trainer(m, args, device=dev)
    step = make_step(m)
    amp = torch.autocast(torch.device(dev).type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    wall, cpu, mets = [], [], []
    for i in range(steps):
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        tr.step, tr.lr = i, args.lr
        with amp:
            met = step(tr, i)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        mets.append({k: float(v) for k, v in met.items() if k in ("windows", "k_mean", "tokens", "loss")})
    w = sorted(wall[2:])
    res = dict(name=name, median_s=w[len(w) // 2], min_s=w[0], first_s=wall[0], cpu_median_s=sorted(cpu[2:])[len(w) // 2],
               metrics=mets[-1])
    print(json.dumps(res), flush=True)
    return res


PREC = ["--precision", "bf16"]
out = []
kd_args = parse("kd", ["--drafter-kind", "feature", "--batch-size", "8", "--chunk-len", "128", "--ttt-steps", "3"] + PREC)
kd_args.kd_positions = "continuation"
kind = drafters.get("feature")


def kd_step(m):
    def f(tr, i):
        loss, met = kind.kd_loss(tr.ddp, cache, vocab, kd_args, torch.Generator().manual_seed(i), dev)
        met["grad_norm"] = tr.update(loss)
        return met
    return f


out.append(timed("kd", kd_args, kd_step))
for name, extra in (("expected adaptive k 1..8", ["--k-min", "1", "--k-max", "8"]),
                    ("expected fixed k=4", ["--no-adaptive-window", "--k", "4"]),
                    ("sampled k 1..6", ["--estimator", "sampled", "--k-min", "1", "--k-max", "6"])):
    a = parse("ppow", ["--cost-profile", "h200-gemma3-270m", "--chunks", "8", "--chunk-len", "128"] + extra + PREC)
    out.append(timed(name, a, lambda m, a=a: ppow.make_step_fn(m, None, cache, vocab, a)))
summary = dict(device=dev, name=torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu",
               torch=torch.__version__, threads=torch.get_num_threads(), steps=steps, seqs=n_seq, results=out)
print(json.dumps(summary))
if opt.out:
    with open(opt.out, "w") as f:
        json.dump(summary, f, indent=1)
