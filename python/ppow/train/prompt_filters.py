"""Prompt hygiene for training data: normalisation, near-duplicate removal, benchmark decontamination,
and the length / language mix of a prompt set. Pure Python (no torch, no model).

Decontamination rule (`BenchmarkFilter`): a candidate prompt is dropped when, after normalisation
(NFKC, lowercase, punctuation removed, whitespace collapsed), it
- equals a benchmark prompt or is a substring of one (short candidates), or
- shares at least half of its word 5-grams with one benchmark prompt (a copy with a few words changed), or
- contains at least half of one benchmark prompt's word 5-grams (a copy embedded in a longer request),
  two shared 5-grams at least in both cases (one is a common phrase), or
- shares one word 13-gram with any benchmark prompt (a long verbatim span, GPT-3's contamination test).
Every turn of a multi-turn benchmark entry counts as a benchmark prompt.

Near duplicates (`Deduper`): MinHash over word 3-gram shingles (64 permutations, 16 bands of 4), a
candidate is a duplicate of an earlier one when their estimated Jaccard similarity is >= 0.7; exact
normalised duplicates are always caught.
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter, defaultdict

import numpy as np

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def ngrams(words: list, n: int) -> set:
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def read_benchmark_prompts(path: str) -> list:
    """Every prompt text of a benchmark file: jsonl with `turns` (Spec-Bench, MT-bench) or `text`/`prompt`/
    `question` fields, or plain text, one prompt per line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if path.endswith((".jsonl", ".json")):
                obj = json.loads(line)
                turns = obj.get("turns") or [obj.get(k) for k in ("text", "prompt", "question") if obj.get(k)]
                out.extend(t for t in turns if isinstance(t, str) and t.strip())
            else:
                out.append(line)
    return out


class BenchmarkFilter:
    """`filter.match(text)` -> the index of the benchmark prompt `text` copies, or None."""

    N, LONG = 5, 13

    def __init__(self, prompts: list):
        self.prompts = [normalize(p) for p in prompts]
        self.exact = set(self.prompts)
        self.index = defaultdict(set)  # word 5-gram -> benchmark prompt ids
        self.n_grams = []               # number of 5-grams of each benchmark prompt
        self.long = {}                  # every word 13-gram of every benchmark prompt -> its id
        for i, p in enumerate(self.prompts):
            words = p.split()
            grams = ngrams(words, self.N)
            self.n_grams.append(len(grams))
            for g in grams:
                self.index[g].add(i)
            for g in ngrams(words, self.LONG):
                self.long.setdefault(g, i)

    def match(self, text: str):
        t = normalize(text)
        if not t:
            return None
        if t in self.exact:
            return self.prompts.index(t)
        words = t.split()
        grams = ngrams(words, self.N)
        if not grams:  # shorter than 5 words: only a verbatim piece of a benchmark prompt counts
            for i, p in enumerate(self.prompts):
                if len(t) >= 12 and t in p:
                    return i
            return None
        shared = Counter()
        for g in grams:
            for i in self.index.get(g, ()):
                shared[i] += 1
        for i, c in shared.most_common():
            if c < 2:  # one shared 5-gram is a common phrase ("what is the capital of"), not a copy
                break
            if c >= 0.5 * len(grams) or c >= 0.5 * self.n_grams[i]:
                return i
        for g in ngrams(words, self.LONG):
            if g in self.long:
                return self.long[g]
        return None


class Deduper:
    """`deduper.add(text)` -> True when `text` is new (and remembers it), False for a near duplicate."""

    PERM, BANDS = 64, 16

    def __init__(self, threshold: float = 0.7, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.threshold = threshold
        self.a = rng.integers(1, (1 << 61) - 1, self.PERM, dtype=np.uint64)
        self.b = rng.integers(0, (1 << 61) - 1, self.PERM, dtype=np.uint64)
        self.buckets = [dict() for _ in range(self.BANDS)]
        self.signatures = []
        self.exact = set()

    def _signature(self, shingles: set) -> np.ndarray:
        h = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") >> 3
                      for s in shingles], dtype=np.uint64)
        # (a*h + b) mod 2^64, min over shingles: a universal-enough family for shingle sets of prompts
        return (h[None, :] * self.a[:, None] + self.b[:, None]).min(axis=1)

    def add(self, text: str) -> bool:
        t = normalize(text)
        if t in self.exact:
            return False
        words = t.split()
        shingles = ngrams(words, 3) or {t}
        sig = self._signature(shingles)
        rows = self.PERM // self.BANDS
        keys = [sig[b * rows:(b + 1) * rows].tobytes() for b in range(self.BANDS)]
        for b, key in enumerate(keys):
            j = self.buckets[b].get(key)
            if j is not None and float(np.mean(self.signatures[j] == sig)) >= self.threshold:
                return False
        j = len(self.signatures)
        self.signatures.append(sig)
        self.exact.add(t)
        for b, key in enumerate(keys):
            self.buckets[b].setdefault(key, j)
        return True


# Language guess: the script, then for Latin text the language whose common words it uses most.
_STOPWORDS = {
    "en": "the and of to is in that it for you with what how are this can be on your an",
    "fr": "le la les et des est une un que pour dans qui pas du au sur vous avec",
    "de": "der die und das ist nicht ein eine ich zu mit sie den es von auf wie",
    "es": "el la los las y es que de en un una por para con no se su como",
    "it": "il di che e la per un una non sono del della con come questo",
    "pt": "o a os as e que de do da em um uma para com não por como",
}
_STOP = {lang: set(w.split()) for lang, w in _STOPWORDS.items()}
_SCRIPTS = [("zh/ja", r"[\u3040-\u30ff\u4e00-\u9fff]"), ("ko", r"[\uac00-\ud7af]"), ("ru/cyrillic", r"[\u0400-\u04ff]"),
            ("ar", r"[\u0600-\u06ff]"), ("hi/devanagari", r"[\u0900-\u097f]"), ("el", r"[\u0370-\u03ff]")]


def guess_language(text: str) -> str:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "none"
    for name, pat in _SCRIPTS:
        if len(re.findall(pat, text)) >= 0.3 * len(letters):
            return name
    words = normalize(text).split()
    best, hits = "other-latin", 0
    for lang, stop in _STOP.items():
        h = sum(w in stop for w in words)
        if h > hits:
            best, hits = lang, h
    return best if hits else ("en" if re.fullmatch(r"[\x00-\x7f]*", text) else "other-latin")


def mix_report(texts: list) -> dict:
    """Length (words, buckets) and language mix of a prompt set, as counts."""
    buckets = [(0, 5), (5, 10), (10, 20), (20, 40), (40, 80), (80, 160), (160, 10 ** 9)]
    lengths = Counter()
    for t in texts:
        n = len(t.split())
        for lo, hi in buckets:
            if lo <= n < hi:
                lengths[f"{lo}-{hi - 1}" if hi < 10 ** 9 else f"{lo}+"] += 1
    words = sorted(len(t.split()) for t in texts)
    return dict(prompts=len(texts),
                words_median=words[len(words) // 2] if words else 0,
                words_by_bucket=dict(lengths),
                languages=dict(Counter(guess_language(t) for t in texts).most_common()))
