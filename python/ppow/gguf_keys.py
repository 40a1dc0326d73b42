"""GGUF metadata keys ppow adds to drafters: written by ppow-convert, read by the bench's
llama-cpp-python peer and by the C++ engine (cpp/drafter.cpp spells the same strings)."""

# int32 array: draft-vocabulary index -> target token id (a reduced draft vocabulary)
DRAFT_VOCAB_D2T = "ppow.draft_vocab.d2t"
# the draft id fed for target tokens outside the draft vocabulary
DRAFT_VOCAB_UNK = "ppow.draft_vocab.unk_id"
# the vocabulary size of the target a drafter was converted for
TARGET_N_VOCAB = "ppow.target.n_vocab"

# Feature drafters are llama.cpp's own `eagle3` architecture (cpp/feature_drafter.cpp reads it).
EAGLE3_ARCH = "eagle3"


def is_feature_drafter(path) -> bool:
    """True for a GGUF whose general.architecture is eagle3 (reads only the metadata)."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(path)).fields.get("general.architecture")
    except Exception:  # not a GGUF: not a feature drafter either (the loader names the problem)
        return False
    return field is not None and bytes(field.parts[-1]).decode(errors="replace") == EAGLE3_ARCH
