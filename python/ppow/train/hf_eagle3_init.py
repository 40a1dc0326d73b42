"""A Hugging Face EAGLE-3 checkpoint dir as the start of training: `ppow-train kd|ppow --init DIR`.

ppow_convert reads the checkpoint and checks it against the target with the rules of
`ppow-convert eagle3-hf` (vocabulary, hidden size, layer ids, tensors, an own embed_tokens only when
it is the target's); here it becomes a FeatureDrafter with ppow's config, weights (q/k rows for
adjacent-pair RoPE) and draft vocabulary. From there it trains and saves as any ppow checkpoint.
"""
import os

import numpy as np
import torch

from ppow_convert.errors import ConvertError
from ppow_convert.hf_eagle3 import is_hf_eagle3, read_hf_eagle3
from ppow_convert.target_info import TargetInfo

from . import feature_model as FM
from .vocab import DraftVocab, IdentityVocab

__all__ = ["is_hf_eagle3", "load"]


def load(model_dir, target, device="cpu"):
    """(model, vocab, info) as checkpoint.load_drafter returns them; target: feature_model.read_target's dict."""
    embed = target["embed"]
    where = "the target"
    info_t = TargetInfo(where, int(target["vocab_size"]), int(target["hidden_size"]), int(target["n_layer"]) or None,
                        lambda ids: embed[torch.as_tensor(ids)].numpy())
    try:
        d = read_hf_eagle3(model_dir, info_t)
    except ConvertError as e:
        raise ValueError(str(e)) from None
    cfg = FM.make_config(**{k: d.cfg[k] for k in FM.DEFAULT_CONFIG if k in d.cfg})
    model = FM.FeatureDrafter(cfg)
    sd = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in d.tensors.items()}  # a copy: writable
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{model_dir}: weights do not fit the drafter's config: {str(e)[:300]}") from None
    vocab = IdentityVocab(cfg["target_vocab_size"]) if d.d2t is None else DraftVocab(d.d2t, cfg["target_vocab_size"])
    model.set_d2t(vocab.d2t)
    model.set_embeddings(embed)
    return model.to(device), vocab, dict(init_from="hf-eagle3", source=os.path.abspath(model_dir))
