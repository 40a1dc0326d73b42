"""GGUF metadata keys ppow adds to drafters: written by ppow-convert, read by the bench's
llama-cpp-python peer and by the C++ engine (cpp/drafter.cpp spells the same strings)."""

# int32 array: draft-vocabulary index -> target token id (a reduced draft vocabulary)
DRAFT_VOCAB_D2T = "ppow.draft_vocab.d2t"
# the draft id fed for target tokens outside the draft vocabulary
DRAFT_VOCAB_UNK = "ppow.draft_vocab.unk_id"
# the vocabulary size of the target a drafter was converted for
TARGET_N_VOCAB = "ppow.target.n_vocab"
