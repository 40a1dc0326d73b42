"""Prompt templates shared by the trainer's data stage, its eval, and ppow-bench.

Gemma 3 270M is a base model: the `qa` template gives it a question-answer frame, so the text a
drafter is trained on and the text it is benchmarked on come from the same kind of context.

`chat` is the target's own chat format, for instruction-tuned targets such as SmolLM2-135M-Instruct:
the question becomes one user message ([{"role": "user", "content": q}], no system message, so a
template that adds a default system prompt, as SmolLM2's does, adds it) rendered with
add_generation_prompt=True by the GGUF's `tokenizer.chat_template` (jinja, rendered the way
transformers does, by llama-cpp-python's Jinja2ChatFormatter). A GGUF without one (the Gemma 3 270M
file has none) gets llama.cpp's built-in template for its architecture (`gemma` for gemma3). The
text contains the turn markers as text: tokenize it with parse_special=True (`parse_special()` says
when); a leading BOS the template writes is dropped when the tokenizer adds one itself.
"""
from __future__ import annotations

import ctypes
import functools
import logging

TEMPLATES = {
    "raw": "{q}",
    "qa": "Question: {q}\nAnswer:",
    "chat": None,  # the target's own chat template, see chat_template()
}


def apply_template(name: str, question: str, target: str | None = None) -> str:
    """`question` framed by template `name`; `chat` needs the target GGUF's path."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r} (known: {', '.join(TEMPLATES)})")
    if name == "chat":
        if target is None:
            raise ValueError("the chat template is the target's own: it needs the target GGUF")
        return chat_template(str(target))(question)
    return TEMPLATES[name].format(q=question)


def parse_special(name: str) -> bool:
    """Whether text made by template `name` must be tokenized with special tokens parsed."""
    return name == "chat"


@functools.lru_cache(maxsize=8)
def chat_template(target: str):
    """A function question -> chat prompt text for the target GGUF at path `target`."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from ppow.errors import PpowError

    info = _chat_info(target)
    if info["template"] is not None:
        fmt = Jinja2ChatFormatter(info["template"], eos_token=info["eos"], bos_token=info["bos"],
                                  add_generation_prompt=True)

        def render(q):
            return fmt(messages=[{"role": "user", "content": q}]).prompt
    else:
        builtin = _builtin_template(info["arch"])
        if builtin is None:
            raise PpowError(f"{target} has no tokenizer.chat_template and llama.cpp has no built-in chat template "
                            f"for its architecture ({info['arch']}); use another --template")

        def render(q):
            msg = (llama_cpp.llama_chat_message * 1)(llama_cpp.llama_chat_message(b"user", q.encode("utf-8")))
            size = 2 * len(msg[0].content) + 256
            while True:
                buf = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_chat_apply_template(builtin.encode(), msg, 1, True, buf, size)
                if n < 0:
                    raise PpowError(f"llama.cpp could not apply its {builtin!r} chat template")
                if n <= size:
                    return buf.raw[:n].decode("utf-8")
                size = n

    def apply(question: str) -> str:
        text = render(question)
        if info["add_bos"] and info["bos"] and text.startswith(info["bos"]):
            text = text[len(info["bos"]):]  # the tokenizer adds BOS itself (add_special=True)
        return text

    return apply


def _chat_info(path: str) -> dict:
    """The chat template (or None), architecture, BOS/EOS texts and add-BOS flag of a GGUF: its
    vocabulary only is loaded through llama-cpp-python (no weights, no context; ~0.3 s for Gemma)."""
    import os

    import llama_cpp

    from ppow.errors import PpowError

    if not os.path.isfile(path):
        raise PpowError(f"the chat template is read from the target's GGUF file; not a file: {path}")
    params = llama_cpp.llama_model_default_params()
    params.vocab_only, params.use_extra_bufts = True, False
    log = logging.getLogger("llama-cpp-python")  # llama-cpp-python's log callback prints below its level
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    finally:
        log.setLevel(level)
    if not model:
        raise PpowError(f"cannot read the GGUF {path}")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_meta_val_str(model, b"general.architecture", buf, len(buf))
        tmpl = llama_cpp.llama_model_chat_template(model, None)

        def text(tok):
            return llama_cpp.llama_vocab_get_text(vocab, tok).decode("utf-8") if tok >= 0 else ""

        return dict(template=tmpl.decode("utf-8") if tmpl else None, arch=buf.value.decode() if n > 0 else "",
                    bos=text(llama_cpp.llama_vocab_bos(vocab)), eos=text(llama_cpp.llama_vocab_eos(vocab)),
                    add_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)))
    finally:
        llama_cpp.llama_model_free(model)


def _builtin_template(arch: str) -> str | None:
    """The longest name of llama.cpp's built-in chat templates that `arch` starts with (gemma3 -> gemma)."""
    import llama_cpp

    n = llama_cpp.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * n)()
    llama_cpp.llama_chat_builtin_templates(names, n)
    fits = [s.decode() for s in names if arch.startswith(s.decode())]
    return max(fits, key=len) if arch and fits else None
