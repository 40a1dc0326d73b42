"""One exception type for every bad-input case, so the CLI can print it as a single line."""


class ConvertError(Exception):
    """Bad input (config, tensors, tokenizer, target GGUF): message names the problem."""
