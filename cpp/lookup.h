// lookup.h - prompt lookup: a free draft taken from the history itself. Where the history's last n
// tokens (n = max_ngram down to 1) occurred before, the tokens that followed their latest earlier
// occurrence are the draft (as llama-cpp-python's LlamaPromptLookupDecoding and llama.cpp's ngram
// drafts). It costs no forward pass, so it pays wherever the text repeats its input: code edits,
// extraction, summaries quoting the source.
#pragma once

#include "llama.h"

#include <vector>

namespace ppow {

constexpr int kLookupMaxNgram = 2;

struct LookupDraft {
    std::vector<llama_token> tokens;  // up to n_max; empty: no earlier occurrence of even the last token
    int ngram = 0;                    // length of the matched tail (its acceptance differs by length)
};

LookupDraft lookup_draft(const std::vector<llama_token> & hist, int n_max, int max_ngram = kLookupMaxNgram);

}  // namespace ppow
