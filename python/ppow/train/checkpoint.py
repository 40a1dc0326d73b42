"""Checkpoints: safetensors + JSON only (never pickle).

A checkpoint dir:
  config.json                  the drafter's config: a LlamaConfig (standalone kind, what transformers
                               reads) or model_type "ppow_eagle3" (feature kind, feature_model.py)
  model.safetensors            weights (standalone: LlamaForCausalLM names; feature: feature_model.py's,
                               without the target's embedding, which is borrowed)
  draft_vocab.safetensors      d2t, only with a reduced draft vocabulary
  ppow_train.json              provenance: stage, target sha256, step, args
  trainer_state.safetensors    optimizer tensors + RNG states           (resume only)
  trainer_state.json           optimizer scalars/param groups, step     (resume only)
A checkpoint is written to a temporary dir and renamed into place, so a kill never leaves half of one.
"""

import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from . import feature_model as FM
from . import model as M
from .vocab import load_draft_vocab, save_draft_vocab


def drafter_kind(ckpt_dir):
    """"feature" for an EAGLE-3 feature drafter, else "standalone" (from config.json's model_type)."""
    with open(os.path.join(ckpt_dir, "config.json")) as f:
        return "feature" if json.load(f).get("model_type") == FM.MODEL_TYPE else "standalone"


def save_config(model, path):
    (FM if model.kind == "feature" else M).save_config(model.cfg, path)


def save_weights(model, ckpt_dir):
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.cfg.get("tie_word_embeddings"):
        sd.pop("lm_head.weight", None)  # as transformers saves tied models
    save_file(sd, os.path.join(ckpt_dir, "model.safetensors"), metadata={"format": "pt"})


def load_weights(model, ckpt_dir):
    """Load a checkpoint's weights into a model of the same config (strict)."""
    sd = load_file(os.path.join(ckpt_dir, "model.safetensors"))
    if model.cfg.get("tie_word_embeddings"):
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{ckpt_dir}: weights do not fit the drafter's config: {str(e)[:300]}") from None


def read_info(ckpt_dir):
    p = os.path.join(ckpt_dir, "ppow_train.json")
    if not os.path.exists(p):
        return {}
    with open(p) as f:
        return json.load(f)


def load_drafter(ckpt_dir, target_vocab_size=None, device="cpu", target=None):
    """(model, vocab, info) from a checkpoint dir.

    A feature drafter also needs its target's embedding matrix: `target` (a GGUF path, or the dict of
    feature_model.read_target), else the target path recorded at training, checked by sha256.
    """
    info = read_info(ckpt_dir)
    tvs = target_vocab_size or info.get("target_vocab_size")
    vocab = load_draft_vocab(ckpt_dir, tvs)
    if drafter_kind(ckpt_dir) == "feature":
        model = FM.FeatureDrafter(FM.load_config(os.path.join(ckpt_dir, "config.json")))
        load_weights(model, ckpt_dir)
        model.set_d2t(vocab.d2t)
        model.set_embeddings(_feature_target(target, info)["embed"])
    else:
        model = M.Drafter(M.load_config(os.path.join(ckpt_dir, "config.json")))
        load_weights(model, ckpt_dir)
    return model.to(device), vocab, info


def _feature_target(target, info):
    if isinstance(target, dict):
        return target
    from .data import sha256_of

    path = target or info.get("target_path")
    if not path or not os.path.isfile(path):
        raise ValueError(f"a feature drafter borrows its target's token embeddings: pass the target GGUF "
                         f"(--target); the recorded one ({path}) is not there")
    if info.get("target_sha256") and sha256_of(path) != info["target_sha256"]:
        raise ValueError(f"{path} is not the target this drafter was trained for (sha256 differs)")
    return FM.read_target(path)


def _flatten_optimizer(opt):
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{key}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(opt, tensors, js):
    state = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    for name, v in js["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": js["param_groups"]})


def save_checkpoint(ckpt_dir, model, vocab, info, optimizer=None, step=None, extra_tensors=None, extra_state=None):
    """Write a checkpoint atomically. info goes to ppow_train.json; optimizer/step make it resumable."""
    tmp = ckpt_dir.rstrip("/") + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    save_config(model, os.path.join(tmp, "config.json"))
    save_weights(model, tmp)
    save_draft_vocab(vocab, tmp)
    with open(os.path.join(tmp, "ppow_train.json"), "w") as f:
        json.dump(info, f, indent=2, default=str)
    if optimizer is not None:
        tensors, js = _flatten_optimizer(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        for k, v in (extra_tensors or {}).items():
            tensors[f"extra.{k}"] = v.detach().contiguous().cpu()
        save_file(tensors, os.path.join(tmp, "trainer_state.safetensors"))
        js["step"] = step
        js["extra"] = extra_state or {}
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(js, f, indent=2)
    old = ckpt_dir.rstrip("/") + ".old"
    if os.path.exists(ckpt_dir):
        if os.path.exists(old):
            shutil.rmtree(old)
        os.replace(ckpt_dir, old)
    os.replace(tmp, ckpt_dir)
    if os.path.exists(old):
        shutil.rmtree(old)


def load_trainer_state(ckpt_dir, optimizer):
    """Restore optimizer + RNG; returns (step, extra_tensors, extra_state)."""
    tensors = load_file(os.path.join(ckpt_dir, "trainer_state.safetensors"))
    with open(os.path.join(ckpt_dir, "trainer_state.json")) as f:
        js = json.load(f)
    _restore_optimizer(optimizer, tensors, js)
    torch.set_rng_state(tensors["rng.torch"])
    extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    return js["step"], extra, js.get("extra", {})


def has_trainer_state(ckpt_dir):
    return os.path.exists(os.path.join(ckpt_dir, "trainer_state.json"))
