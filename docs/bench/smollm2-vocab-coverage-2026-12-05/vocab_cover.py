"""Coverage of SmolLM2's greedy tokens on the 240 dev prompts (dev96 + dev144 caches, scored rows) by
draft vocabularies: the shipped drafters' d2t, and the N most frequent tokens of the training caches."""
import glob, sys
import numpy as np
from safetensors import safe_open

def col(dirs, key, scored_only):
    out = []
    for d in dirs:
        for f in sorted(glob.glob(d + "/shard_*.safetensors")):
            with safe_open(f, "np") as s:
                v = s.get_tensor(key)
                if scored_only:
                    v = v[s.get_tensor("scored").astype(bool)]
                out.append(v)
    return np.concatenate(out)

dev = col(["/work/runs/s6/dev96-smollm2", "/work/runs/s6/dev144-smollm2"], "greedy", True)
train = col(["/work/data/smollm2-v1-math", "/work/runs/s8/smollm2-v1-24shards"], "tokens", False)
with safe_open("/work/runs/s7/smol-anneal/final/draft_vocab.safetensors", "np") as s:
    d2t = s.get_tensor("d2t")
print(f"dev scored rows {len(dev)}, training tokens {len(train)}")
print(f"shipped d2t ({len(d2t)}): {np.isin(dev, d2t).mean():.4f}")
freq = np.bincount(train, minlength=49152)
order = np.argsort(-freq, kind="stable")
for n in (8192, 16384, 32768, 49152):
    print(f"top {n} of the training caches: {np.isin(dev, order[:n]).mean():.4f}")
