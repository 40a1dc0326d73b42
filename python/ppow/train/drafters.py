"""The drafter interface: what the KD stage, ppow.py and evaluate.py need from a drafter, one class per kind.

  standalone  a small Llama over token ids (model.py); sees only the text
  feature     an EAGLE-3 drafter (feature_model.py); sees the target's hidden states (llama.cpp eagle3)

Each kind provides
  build(cache, vocab, args, target_path)   a fresh drafter for the cache's target
  kd_loss(model, cache, vocab, args, g, device) -> (loss, metrics) of one KD batch
  contexts(cache, vocab, starts, ctx_len)  what a window drafted after committed cache position t
                                           conditions on (list, one per start)
  draft(model, contexts, k, greedy, temperature, generator, gather_ids) -> tokens, logp[, q_at]
  forward_windows(model, contexts, cont)   teacher-forced logits [B,k,V] over drafted tokens
                                           (differentiable; model may be DDP-wrapped)
Checkpoints load and save through checkpoint.py for both kinds (config.json tells which).
kd_step_fn is the KD stage's training step for either kind (kd.py holds the losses and builders it calls,
so kd.py imports nothing from here).
"""

from . import feature_model as FM
from . import kd
from . import model as M
from .common import step_generator


class Standalone:
    name = "standalone"

    def build(self, cache, vocab, args, target_path=None):
        emb = None
        if args.init_embed == "target":
            if not target_path:
                raise ValueError("--init-embed target needs --target")
            emb = M.read_target_embeddings(target_path)
        model, kept = kd.build_drafter(cache, vocab, args, emb)
        return model, dict(embed_variance_kept=kept)

    kd_loss = staticmethod(kd.standalone_kd_loss)

    def contexts(self, cache, vocab, starts, ctx_len):
        return [vocab.to_draft_input(cache.context(int(t), ctx_len)) for t in starts]

    draft = staticmethod(M.draft)
    forward_windows = staticmethod(M.forward_windows)


class Feature:
    name = "feature"

    def build(self, cache, vocab, args, target_path=None):
        if not target_path:
            raise ValueError("a feature drafter borrows the target's embeddings: pass --target")
        model = kd.build_feature_drafter(cache, vocab, args, FM.read_target(target_path))
        return model, dict(target_layers=model.cfg["target_layers"])

    kd_loss = staticmethod(kd.feature_kd_loss)

    def contexts(self, cache, vocab, starts, ctx_len):
        if cache.hidden is None:
            raise ValueError("a feature drafter needs a cache with the target's features (ppow-train data --layers)")
        return [FM.make_context(cache, int(t), ctx_len) for t in starts]

    draft = staticmethod(FM.draft)
    forward_windows = staticmethod(FM.forward_windows)


def check_cache(model, cache):
    """A feature drafter reads the cache's features: they must be of its target layers."""
    core = getattr(model, "module", model)
    if core.kind == "feature" and cache.layers != core.cfg["target_layers"]:
        raise ValueError(f"the drafter reads target layers {core.cfg['target_layers']}, the cache holds "
                         f"{cache.layers}: build the cache with `ppow-train data --layers "
                         f"{','.join(map(str, core.cfg['target_layers']))}`")


KINDS = {k.name: k for k in (Standalone(), Feature())}
STANDALONE = KINDS["standalone"]


def get(name):
    if name not in KINDS:
        raise ValueError(f"unknown drafter kind {name!r} (choose from {', '.join(KINDS)})")
    return KINDS[name]


def of(model):
    """The kind of a drafter (or of a DDP-wrapped one)."""
    return KINDS[getattr(model, "module", model).kind]


def kd_step_fn(cache, vocab, args, rank=0):
    """One KD step of the drafter kind args.drafter_kind (default standalone), as loop.run calls it."""
    kind = get(getattr(args, "drafter_kind", None) or "standalone")

    def step_fn(tr, step):
        g = step_generator(args.seed, step, rank)
        loss, metrics = kind.kd_loss(tr.ddp, cache, vocab, args, g, tr.device)
        metrics["grad_norm"] = tr.update(loss)
        return metrics

    return step_fn
