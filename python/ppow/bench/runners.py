"""One runner per system under test; every runner answers prime(ids) and run(ids) -> Measure.

A system is one way of generating: ppow plain, ppow with a drafter at a fixed window k, ppow
with the auto window policy, and the peers (peer_llamacpp.py, peer_hf.py). The bench calls
prime() untimed right before each timed run() so that prompt processing (the target's and, for
speculative systems, the drafter's) is done before the clock starts; run() then times only the
generation loop. Runs that include prompt processing say so in System.timing.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Measure:
    tokens: list
    t_ms: float                      # generation time, definition given by System.timing
    n_steps: int | None = None       # target forward passes (verify steps) during generation
    n_drafted: int | None = None
    n_accepted: int | None = None
    drafted_at: list | None = None   # windows that reached draft position i
    accepted_at: list | None = None  # ... and had position i accepted
    stop_reason: str = ""
    n_decoded: int | None = None     # tokens the engine decoded, where `tokens` is its text re-tokenized
    exact: bool | None = None        # ppow: the engine's own word that this output equals plain greedy's

    @property
    def n_generated(self) -> int:
        return len(self.tokens) if self.n_decoded is None else self.n_decoded

    @property
    def tau(self) -> float | None:
        """Tokens committed per target step: (accepted + steps) / steps, as ppow's Stats.tau."""
        if not self.n_steps:
            return None
        if self.n_accepted is None:
            return self.n_generated / self.n_steps
        return (self.n_accepted + self.n_steps) / self.n_steps

    @property
    def tokens_per_second(self) -> float | None:
        return 1000.0 * self.n_generated / self.t_ms if self.t_ms > 0 and self.n_generated else None


@dataclass
class System:
    name: str
    family: str                  # "ppow" | "llama-cpp-python" | "llama.cpp" | "hf"
    runner: object               # has prime(ids) and run(ids) -> Measure
    baseline: str | None = None  # name of the plain system this one is compared with; None: it is one
    drafter: str | None = None
    policy: str | None = None    # "fixed" | "auto" | "hf-default"
    k: int | None = None
    max_prompts: int | None = None  # run on the first N prompts only (the slow HF peer)
    compare_prefix: bool = False    # output check over the common length (an engine that may run past -n)
    timing: str = "generation loop, prompt processing excluded"
    notes: list = field(default_factory=list)

    def describe(self) -> dict:
        return {"name": self.name, "family": self.family, "baseline": self.baseline, "drafter": self.drafter,
                "policy": self.policy, "k": self.k, "max_prompts": self.max_prompts,
                "compare_prefix": self.compare_prefix, "timing": self.timing,
                "notes": list(self.notes)}


class PpowRunner:
    """ppow.Generator with fixed generation parameters. One Generator may serve several runners
    (the fixed-k runs of one drafter share one); the auto policy gets a Generator of its own so
    its cost model learns only from its own runs."""

    def __init__(self, gen, **params):
        self.gen = gen
        self.params = params

    def prime(self, ids):
        # Leaves the prompt in the target's cache and (when a drafter is loaded) in the drafter's,
        # so the timed run reuses both. The window is 1 and fixed so that priming adds at most one
        # position-0 acceptance observation to an auto generator's cost model.
        self.gen.generate(ids, n_predict=2, temp=0.0, draft_max=1, draft_min=0, draft_policy="fixed")

    def run(self, ids) -> Measure:
        g = self.gen.generate(ids, **self.params)
        s = g.stats
        return Measure(tokens=list(g.tokens), t_ms=s.t_total_ms, n_steps=s.n_steps, n_drafted=s.n_drafted,
                       n_accepted=s.n_accepted, drafted_at=list(s.drafted_at), accepted_at=list(s.accepted_at),
                       stop_reason=s.stop_reason, exact=s.exact)
