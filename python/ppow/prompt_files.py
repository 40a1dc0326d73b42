"""Prompt files and the prompt ids the target sees: what `ppow-train data` and the bench's data-engine
benchmark (`python -m ppow.bench.datagen`) both read.

It sits below both sides (no torch, no trainer, no bench), so a bench command runs on the runtime
install alone. Spec-Bench files for `ppow-bench` itself are read by `ppow.bench.prompts`.
"""
from __future__ import annotations

import json

from ppow.templates import apply_template


def read_prompts(path, limit=None, offset=0, template="raw", target=None):
    """Prompts from jsonl (`text`, or `turns` whose first turn is used) or plain text (one per line).

    Returns dicts {text, category, id}; category comes from a `category` field (else "all").
    `template` (see ppow.templates) frames each prompt, e.g. "qa" for a base model, "chat" (the
    target GGUF's own chat template, `target` its path) for an instruction-tuned one.
    """
    out = []
    with open(path, encoding="utf-8") as f:
        is_jsonl = path.endswith((".jsonl", ".json"))
        for i, line in enumerate(f):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if is_jsonl:
                d = json.loads(line)
                if "text" in d:
                    text = d["text"]
                elif "turns" in d:
                    turns = d["turns"]
                    text = turns[0] if isinstance(turns, list) else str(turns)
                else:
                    raise ValueError(f"{path}:{i + 1}: jsonl rows need a `text` or `turns` field")
                out.append({"text": apply_template(template, text, target), "category": str(d.get("category", "all")),
                            "id": str(d.get("question_id", d.get("id", i)))})
            else:
                out.append({"text": apply_template(template, line, target), "category": "all", "id": str(i)})
    out = out[offset:]
    return out[:limit] if limit is not None else out


def tail_ids(ids, bos_id, prompt_tail):
    """A leading BOS (when ids start with `bos_id`) + the last `prompt_tail` tokens of the rest
    (all of them for 0/None): the prompt ids the data engine caches and the target continues."""
    ids = list(ids)
    bos = ids[:1] if ids and bos_id is not None and ids[0] == bos_id else []
    body = ids[len(bos):]
    return bos + (body[-prompt_tail:] if prompt_tail and len(body) > prompt_tail else body)
