"""Coverage of SmolLM2's greedy tokens on the 240 dev prompts (dev96 + dev144 caches, scored rows) by
draft vocabularies: the shipped drafters' d2t, and the vocabulary `ppow-train kd --draft-vocab N` builds
from the training caches (kd.build_vocab: the N most frequent cache tokens plus the specials)."""
import torch
from safetensors.torch import load_file

from ppow.train.cache import Cache
from ppow.train.kd import build_vocab

dev_cache = Cache(["/work/runs/s6/dev96-smollm2", "/work/runs/s6/dev144-smollm2"])
dev = dev_cache.greedy[dev_cache.scored]
train = Cache(["/work/data/smollm2-v1-math", "/work/runs/s8/smollm2-v1-24shards"], allow_incomplete=True)
shipped = load_file("/work/runs/s7/smol-anneal/final/draft_vocab.safetensors")["d2t"]
print(f"dev scored rows {len(dev)}, training tokens {len(train)}")
print(f"shipped d2t ({len(shipped)}): {torch.isin(dev, shipped).float().mean():.4f}")
for n in (8192, 16384, 32768, 0):
    d2t = build_vocab(train, n).d2t
    share = 1.0 if d2t is None else float(torch.isin(dev, d2t).float().mean())
    print(f"--draft-vocab {n or 'full'}: {share:.4f}")
