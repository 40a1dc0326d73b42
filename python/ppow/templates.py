"""Prompt templates shared by the trainer's data stage, its eval, and ppow-bench.

Gemma 3 270M is a base model: the `qa` template gives it a question-answer frame, so the text a
drafter is trained on and the text it is benchmarked on come from the same kind of context.
"""

TEMPLATES = {
    "raw": "{q}",
    "qa": "Question: {q}\nAnswer:",
}


def apply_template(name: str, question: str) -> str:
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r} (known: {', '.join(TEMPLATES)})")
    return TEMPLATES[name].format(q=question)
