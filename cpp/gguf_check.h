// gguf_check.h - refuse a malformed GGUF file before llama.cpp's loader reads it.
//
// llama.cpp trusts parts of what it loads: some malformed files end in a GGML_ASSERT that aborts the
// whole process (a desktop app included) instead of a returned error. check_gguf() reads the file
// against the GGUF specification (v2/v3) and the tokenizer metadata llama.cpp's vocabulary loader
// needs, and throws Error naming the first problem (key, tensor or byte offset).
#pragma once

#include <llama.h>

#include <string>

namespace ppow {

// Throws Error("failed to load model <path>: <problem>") for a file llama.cpp must not see.
void check_gguf(const std::string & path);

// Tokenizer-less GGUFs (tokenizer.ggml.model = "none": ppow's reduced-vocabulary drafters, eagle3
// drafters) load fine, but llama.cpp aborts when asked to tokenize or spell a token with them.
// Call this where a model's vocabulary will be used (a target, a drafter compared token by token).
void require_vocabulary(const llama_vocab * vocab, const std::string & path, const char * role);

}  // namespace ppow
