"""Spec-Bench prompt files: one JSON object a line with question_id, category and turns.

Only the first turn is used (the bench is single-turn); the template turns it into the text the
target sees. Gemma 3 270M is a base model, so the default `qa` template frames the question as a
completion rather than relying on a chat format; an instruction-tuned target (SmolLM2-135M-Instruct)
takes `chat`, its GGUF's own chat template, which needs the target's path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ppow.templates import TEMPLATES, apply_template  # shared with the trainer's data and eval stages


@dataclass
class Prompt:
    qid: str
    category: str
    text: str


def load_prompts(path, template: str = "qa", limit: int | None = None, per_category: int | None = None,
                 target: str | None = None) -> list[Prompt]:
    """Read a Spec-Bench jsonl, keep the first `per_category` of each category (in file order),
    then the first `limit` of what is left. `target` (a GGUF path) is needed by the chat template."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r} (choose from {', '.join(TEMPLATES)})")
    out, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                turns = row["turns"]
                q = turns[0] if isinstance(turns, list) else turns
                cat = str(row.get("category", "uncategorized"))
                qid = str(row.get("question_id", lineno))
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: not a Spec-Bench record ({e})") from None
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"{path}:{lineno}: the first turn is empty")
            if per_category is not None and seen.get(cat, 0) >= per_category:
                continue
            seen[cat] = seen.get(cat, 0) + 1
            out.append(Prompt(qid=qid, category=cat, text=apply_template(template, q, target)))
    if limit is not None:
        out = out[:limit]
    if not out:
        raise ValueError(f"{path}: no prompts selected")
    return out
