"""Tokenizer metadata for GGUF: from an HF model directory, or copied from another GGUF.

llama.cpp re-implements tokenization from GGUF metadata, so what we write must describe
the HF tokenizer exactly:
- tokenizer.model (SentencePiece) -> tokenizer.ggml.model="llama": pieces, scores, token types;
- tokenizer.json byte-level BPE   -> tokenizer.ggml.model="gpt2": tokens, merges, and a
  `tokenizer.ggml.pre` name that selects llama.cpp's built-in pre-tokenizer regex. We read the
  regex from tokenizer.json and map it to the llama.cpp name with the same regex; an unknown
  pre-tokenizer is an error (guessing silently gives wrong token ids).
"""
import json
import os

import gguf

from .errors import ConvertError

# tokenizer.json pre-tokenizer regex -> llama.cpp tokenizer.ggml.pre (see llama-vocab.cpp)
LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
BPE_PRE_BY_REGEX = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2"}


def bpe_pre_name(pre):
    """llama.cpp pre-tokenizer name for a tokenizer.json `pre_tokenizer` entry."""
    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt-2"  # ByteLevel's built-in regex is GPT-2's
    if pre and pre.get("type") == "Sequence":
        splits = [p for p in pre["pretokenizers"] if p.get("type") == "Split"]
        if len(splits) == 1 and splits[0].get("pattern", {}).get("Regex") in BPE_PRE_BY_REGEX:
            return BPE_PRE_BY_REGEX[splits[0]["pattern"]["Regex"]]
    raise ConvertError(f"unsupported BPE pre-tokenizer in tokenizer.json: {json.dumps(pre)[:200]}")


def _bpe_vocab(model_dir, n_vocab):
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    model = tj.get("model", {})
    if model.get("type") != "BPE" or (tj.get("decoder") or {}).get("type") != "ByteLevel":
        raise ConvertError(f"unsupported tokenizer.json in {model_dir}: only byte-level BPE "
                           f"(got model {model.get('type')}, decoder {(tj.get('decoder') or {}).get('type')})")
    pre = bpe_pre_name(tj.get("pre_tokenizer"))
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    for tok, i in list(model["vocab"].items()) + [(t["content"], i) for i, t in added.items()]:
        if i >= n_vocab:
            raise ConvertError(f"tokenizer.json token {tok!r} has id {i} >= config vocab_size {n_vocab}")
        tokens[i] = tok
        if i in added:
            types[i] = gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED
        else:
            types[i] = gguf.TokenType.NORMAL
    return "gpt2", pre, tokens, None, types


def _spm_vocab(model_dir, n_vocab):
    from sentencepiece import SentencePieceProcessor
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(os.path.join(model_dir, "tokenizer.model"))
    except Exception as e:
        raise ConvertError(f"unreadable SentencePiece tokenizer.model in {model_dir}: {e}") from None
    if sp.vocab_size() > n_vocab:
        raise ConvertError(f"tokenizer.model has {sp.vocab_size()} pieces > config vocab_size {n_vocab}")
    tokens = [f"[PAD{i}]".encode() for i in range(n_vocab)]
    scores = [-1000.0] * n_vocab
    types = [gguf.TokenType.UNUSED] * n_vocab
    for i in range(sp.vocab_size()):
        tokens[i], scores[i] = sp.IdToPiece(i).encode("utf-8"), sp.GetScore(i)
        types[i] = (gguf.TokenType.UNKNOWN if sp.IsUnknown(i) else gguf.TokenType.CONTROL if sp.IsControl(i)
                    else gguf.TokenType.UNUSED if sp.IsUnused(i) else gguf.TokenType.BYTE if sp.IsByte(i)
                    else gguf.TokenType.NORMAL)
    # tokens added on top of the SentencePiece model (e.g. chat markers)
    cfg_path = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            for i, t in json.load(f).get("added_tokens_decoder", {}).items():
                i = int(i)
                if i < n_vocab and tokens[i] != t["content"].encode():
                    tokens[i], scores[i] = t["content"].encode(), -1000.0
                    types[i] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    return "llama", "default", tokens, scores, types


def add_hf_tokenizer(writer, model_dir, n_vocab):
    """Write tokenizer.* KVs for an HF model dir (tokenizer.model preferred, like llama.cpp)."""
    if os.path.isfile(os.path.join(model_dir, "tokenizer.model")):
        kind, pre, tokens, scores, types = _spm_vocab(model_dir, n_vocab)
    elif os.path.isfile(os.path.join(model_dir, "tokenizer.json")):
        kind, pre, tokens, scores, types = _bpe_vocab(model_dir, n_vocab)
    else:
        raise ConvertError(f"no tokenizer.json or tokenizer.model in {model_dir}")
    writer.add_tokenizer_model(kind)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    if scores is not None:
        writer.add_token_scores(scores)
    writer.add_token_types(types)
    try:  # bos/eos/pad ids from config.json and tokenizer_config.json; gguf refuses bad ones with ValueError
        gguf.SpecialVocab(model_dir, load_merges=(kind == "gpt2"), n_vocab=n_vocab).add_to_gguf(writer, quiet=True)
    except ValueError as e:
        raise ConvertError(f"{model_dir}: special tokens: {e}") from None


def token_count(reader, path):
    """Number of tokens in a GGUF's tokenizer (what llama.cpp calls n_vocab)."""
    field = reader.fields.get(gguf.Keys.Tokenizer.LIST)
    if field is None:
        raise ConvertError(f"{path} has no tokenizer (missing {gguf.Keys.Tokenizer.LIST})")
    return len(field.data)


def copy_tokenizer(writer, reader):
    """Copy every tokenizer.* KV of a GGUF verbatim (strings as raw bytes, arrays with their type)."""
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                val = [bytes(field.parts[i]) for i in field.data]
            else:
                val = [v for i in field.data for v in field.parts[i].tolist()]
            writer.add_key_value(name, val, vtype, sub_type=sub)
        elif vtype == gguf.GGUFValueType.STRING:
            writer.add_key_value(name, bytes(field.parts[-1]), vtype)
        else:
            writer.add_key_value(name, field.parts[-1].tolist()[0], vtype)
