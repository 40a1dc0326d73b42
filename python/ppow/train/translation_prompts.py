"""Translation requests made offline by the target itself (`ppow-train prompts --translation N`).

Spec-Bench's translation prompts ask for German news sentences in English, and the training prompts have
none: no German text, so a drafter never sees what the target does with one (Gemma 3 270M, a base model,
mostly copies the German sentence and repeats it) and its draft vocabulary, built from English answers,
lacks the German tokens (the shipped 8,192 cover 61.5 % of the target's translation tokens, 85.2 % of
all). A base model writes German when its context is German, so the target continues short German news
openings (temperature sampling, the data engine in a batch), the German sentences of each continuation
are cut out and filtered (length, no markup, German function words present, English ones rare), and
each becomes a request through one of several instruction phrasings. Half the sentences get the
tokenised spacing of the WMT news test sets (a space before punctuation), as users paste such text too.
The requests then pass prompts.py's filters like every other prompt (deduplication, benchmark copies).
prompts.py runs the continuations (prompts.synthesize with GERMAN_OPENINGS; resumable, the raw file keeps
every continuation as it arrives); this module only turns them into requests (no model, no torch).
"""
from __future__ import annotations

import random
import re

# Neutral news openings: the target's continuation is the German text (meaningless or not, it is the
# target's own German, which is what its answers to translation requests are made of).
GERMAN_OPENINGS = (
    "Die Polizei", "Am Montag", "Nach Angaben des", "Der Bürgermeister", "In Berlin", "Die Bundesregierung",
    "Laut einem Bericht", "Der Konzern", "Im vergangenen Jahr", "Die Zahl der", "Wie die Zeitung", "Die Stadt",
    "Der Präsident", "Experten warnen", "Die Preise", "Bei dem Unfall", "Die Schüler", "Der Trainer",
    "Die Wissenschaftler", "Das Unternehmen", "Viele Menschen", "Die Ministerin", "Zum ersten Mal",
    "Der Angeklagte", "In der Schweiz", "Die Feuerwehr", "Seit Jahren", "Der Verein", "Die Gemeinde",
    "Nach dem Spiel", "Die Ärzte", "Am Wochenende",
)

REQUEST_FORMS = (
    "Translate German to English: {s}",
    "Translate the following German sentence into English: {s}",
    "Translate into English: {s}",
    "What does this German sentence mean in English? {s}",
    "Please translate this from German to English:\n{s}",
    "German: {s}\nEnglish translation?",
)

_GERMAN_WORDS = frozenset(
    "der die das und ist nicht mit den dem des ein eine einer einen zu von im auf für sich es sie er wir werden "
    "wird hat haben sind war auch als an bei nach aus um über noch dass wurde wurden vom zum zur".split())
_ENGLISH_WORDS = frozenset("the and of is with that for this are were have has from which".split())  # not "was"
_SENTENCE_END = re.compile(r"(?<=[^\d\s][.!?])\s+")  # not after "am 09." (a German date goes on)
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_MARKUP = re.compile(r"[<>{}\[\]|#*_=\\/@]|http|www\.")


def looks_german(sentence: str) -> bool:
    """Some German function words, next to no English ones."""
    words = [w.lower() for w in _WORD.findall(sentence)]
    if not words:
        return False
    de = sum(w in _GERMAN_WORDS for w in words) / len(words)
    en = sum(w in _ENGLISH_WORDS for w in words) / len(words)
    return de >= 0.12 and en <= 0.03


def german_sentences(text: str, *, ended: bool = False, min_words: int = 6, max_words: int = 45) -> list:
    """The whole sentences of a continuation that pass the filters. Lines are cut apart first (a headline
    has no full stop); a continuation cut at the token limit (`ended` False) loses its last piece, which
    may end in an abbreviation's full stop ("Dr.") rather than a sentence's."""
    pieces = [s for line in text.splitlines() for s in _SENTENCE_END.split(re.sub(r"\s+", " ", line).strip())]
    if not ended and pieces:
        pieces.pop()
    out = []
    for s in pieces:
        n = len(s.split())
        if (s.endswith((".", "!", "?")) and min_words <= n <= max_words and not _MARKUP.search(s)
                and s[0].isupper() and looks_german(s)):
            out.append(s)
    return out


def wmt_spacing(sentence: str) -> str:
    """`Es regnet, sagt er.` -> `Es regnet , sagt er .` (the tokenised text of the WMT news test sets)."""
    return re.sub(r"(?<![\s.!?])\s*([,.;:!?])(?=\s|$)", r" \1", sentence)  # "gut..." stays


def translation_requests(continuations: list, *, per_continuation: int = 2, seed: int = 0) -> list:
    """(request, source) pairs from [(opening, continuation text, ended)], at most `per_continuation`
    sentences each."""
    rng = random.Random(seed)
    out = []
    for opening, text, ended in continuations:
        for s in german_sentences(opening + text, ended=ended)[:per_continuation]:
            if rng.random() < 0.5:
                s = wmt_spacing(s)
            out.append((rng.choice(REQUEST_FORMS).format(s=s), "translation:de-en"))
    return out
