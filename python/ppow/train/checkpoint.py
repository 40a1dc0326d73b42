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
import math
import os
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from . import feature_model as FM
from . import hf_eagle3_init
from . import model as M
from .vocab import load_draft_vocab, save_draft_vocab


# ---------------------------------------------------------------------------------------------------
# Checkpoints come from other machines and other people: everything is checked before it sizes a tensor.

def _json(path, what="a JSON object"):
    try:
        with open(path) as f:
            d = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold {what}")
    return d


def _tensors(path):
    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type on a bad file
        raise ValueError(f"{path}: unreadable safetensors file ({str(e)[:200]})") from None


_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "max_position_embeddings", "target_hidden_size", "target_vocab_size",
          "draft_vocab_size")
_POSITIVE = ("rms_norm_eps", "rope_theta", "initializer_range")


def _check_config(d, defaults, path):
    """Types and ranges of config.json fields (None only where the default derives the value)."""
    for k, v in d.items():
        if k not in defaults or (v is None and defaults[k] is None):
            continue
        top = 512 if k == "num_hidden_layers" else 2**31 - 1  # layers are built one module each
        if k in _SIZES and not (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= top):
            raise ValueError(f"{path}: {k} must be an integer in [1, {top}], got {v!r}")
        if k in _POSITIVE and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf):
            raise ValueError(f"{path}: {k} must be a positive number, got {v!r}")
        if isinstance(defaults[k], bool) and not isinstance(v, bool):
            raise ValueError(f"{path}: {k} must be true or false, got {v!r}")
    layers = d.get("target_layers")
    is_layer = lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0  # noqa: E731
    if "target_layers" in defaults and not (isinstance(layers, list) and all(map(is_layer, layers))):
        raise ValueError(f"{path}: target_layers must be a list of layer numbers, got {layers!r}")


def _config(ckpt_dir):
    """(kind module, config dict) of a checkpoint, validated."""
    path = os.path.join(ckpt_dir, "config.json")
    d = _json(path)
    mod = FM if d.get("model_type") == FM.MODEL_TYPE else M
    _check_config(d, mod.DEFAULT_CONFIG, path)
    try:
        return mod, mod.load_config(path)
    except (TypeError, ZeroDivisionError) as e:
        raise ValueError(f"{path}: {e}") from None


def _check_weights(model, path):
    """The weights file must hold exactly the model's tensors, in float types, before anything is read."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if model.cfg.get("tie_word_embeddings"):
        want.pop("lm_head.weight", None)
    try:
        with safe_open(path, framework="pt") as f:
            have = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type on a bad file
        raise ValueError(f"{path}: unreadable safetensors file ({str(e)[:200]})") from None
    for k in sorted(set(want) | set(have)):
        if k not in have or k not in want:
            raise ValueError(f"{path}: tensor {k!r} is {'missing' if k in want else 'not part of this drafter'}")
        if have[k][0] != want[k]:
            raise ValueError(f"{path}: tensor {k!r} has shape {list(have[k][0])}, the config gives {list(want[k])}")
        if have[k][1] not in ("F16", "BF16", "F32", "F64"):
            raise ValueError(f"{path}: tensor {k!r} has dtype {have[k][1]}, expected floating point")


def drafter_kind(ckpt_dir):
    """"feature" for an EAGLE-3 feature drafter, else "standalone" (from config.json's model_type)."""
    if hf_eagle3_init.is_hf_eagle3(ckpt_dir):  # a Hugging Face EAGLE-3 checkpoint (--init DIR)
        return "feature"
    feature = _json(os.path.join(ckpt_dir, "config.json")).get("model_type") == FM.MODEL_TYPE
    return "feature" if feature else "standalone"


def save_config(model, path):
    (FM if model.kind == "feature" else M).save_config(model.cfg, path)


def save_weights(model, ckpt_dir):
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.cfg.get("tie_word_embeddings"):
        sd.pop("lm_head.weight", None)  # as transformers saves tied models
    save_file(sd, os.path.join(ckpt_dir, "model.safetensors"), metadata={"format": "pt"})


def load_weights(model, ckpt_dir):
    """Load a checkpoint's weights into a model of the same config (strict)."""
    _check_weights(model, os.path.join(ckpt_dir, "model.safetensors"))
    sd = load_file(os.path.join(ckpt_dir, "model.safetensors"))
    if model.cfg.get("tie_word_embeddings"):
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{ckpt_dir}: weights do not fit the drafter's config: {str(e)[:300]}") from None


def read_info(ckpt_dir):
    p = os.path.join(ckpt_dir, "ppow_train.json")
    return _json(p) if os.path.exists(p) else {}


def load_drafter(ckpt_dir, target_vocab_size=None, device="cpu", target=None):
    """(model, vocab, info) from a checkpoint dir.

    A feature drafter also needs its target's embedding matrix: `target` (a GGUF path, or the dict of
    feature_model.read_target), else the target path recorded at training, checked by sha256.
    A Hugging Face EAGLE-3 checkpoint dir loads too (hf_eagle3_init.py; it needs `target`).
    """
    if hf_eagle3_init.is_hf_eagle3(ckpt_dir):
        return hf_eagle3_init.load(ckpt_dir, _feature_target(target, {}), device)
    info = read_info(ckpt_dir)
    tvs = target_vocab_size or info.get("target_vocab_size")
    vocab = load_draft_vocab(ckpt_dir, tvs)
    mod, cfg = _config(ckpt_dir)
    cls = FM.FeatureDrafter if mod is FM else M.Drafter
    with torch.device("meta"):  # shapes only: the weights file must fit the config before memory is sized by it
        _check_weights(cls(cfg), os.path.join(ckpt_dir, "model.safetensors"))
    model = cls(cfg)
    load_weights(model, ckpt_dir)
    if mod is FM:
        model.set_d2t(vocab.d2t)
        model.set_embeddings(_feature_target(target, info)["embed"])
    elif vocab.size != cfg["vocab_size"]:
        raise ValueError(f"{ckpt_dir}: the draft vocabulary has {vocab.size} tokens, the drafter {cfg['vocab_size']}")
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


def _restore_optimizer(opt, tensors, js, where):
    """Optimizer state from the flattened form, checked against the optimizer's parameters first."""
    def bad(msg):
        raise ValueError(f"{where}: {msg}")

    params = [p for g in opt.param_groups for p in g["params"]]
    state = {}

    def slot(name, prefix):
        """(state of the parameter, its index, state key) of '<prefix><pid>.<key>'."""
        pid, _, key = name[len(prefix):].partition(".")
        if not pid.isdigit() or int(pid) >= len(params) or not key:
            bad(f"optimizer state {name!r} names no parameter of this drafter")
        return state.setdefault(int(pid), {}), int(pid), key

    for name, v in tensors.items():
        if name.startswith("opt."):
            st, pid, key = slot(name, "opt.")
            if not v.dtype.is_floating_point or (v.dim() > 0 and v.shape != params[pid].shape):
                bad(f"optimizer state {name!r} is {v.dtype} {list(v.shape)}, the parameter {list(params[pid].shape)}")
            st[key] = v
    scalars, groups = js.get("scalars"), js.get("param_groups")
    if not isinstance(scalars, dict) or not isinstance(groups, list) or len(groups) != len(opt.param_groups):
        bad("trainer_state.json needs 'scalars' and one entry of 'param_groups' per optimizer group")
    for name, v in scalars.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            bad(f"optimizer scalar {name!r} is {v!r}")
        st, _, key = slot(name, "")
        st[key] = v
    keys = {frozenset(st) for st in state.values()}
    if len(keys) > 1:
        bad("the parameters' optimizer states hold different entries")
    for g, cur in zip(groups, opt.param_groups):  # hyperparameters keep their kind (number, pair, flag)
        if not isinstance(g, dict) or set(g) != set(cur):
            bad(f"an optimizer parameter group has keys {sorted(g) if isinstance(g, dict) else g!r}")
        for k, v in g.items():
            if k != "params" and _kind(v) != _kind(cur[k]):
                bad(f"optimizer hyperparameter {k!r} is {v!r}")
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        bad(f"optimizer state does not fit this drafter: {e}")


def _kind(v):
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return type(v)
    if isinstance(v, (int, float)):
        return "number" if math.isfinite(v) else "non-finite"
    if isinstance(v, (list, tuple)):
        return tuple(_kind(x) for x in v)
    return type(v)


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
    where = os.path.join(ckpt_dir, "trainer_state")
    tensors = _tensors(where + ".safetensors")
    js = _json(where + ".json")
    step, extra_state, rng = js.get("step"), js.get("extra", {}), tensors.get("rng.torch")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0 or not isinstance(extra_state, dict):
        raise ValueError(f"{where}.json needs a step number and an 'extra' object")
    if rng is None or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
        raise ValueError(f"{where}.safetensors: rng.torch is not a torch RNG state")
    _restore_optimizer(optimizer, tensors, js, where)
    torch.set_rng_state(rng)
    extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    return step, extra, extra_state


def has_trainer_state(ckpt_dir):
    return os.path.exists(os.path.join(ckpt_dir, "trainer_state.json"))
