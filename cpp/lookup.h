// lookup.h - prompt lookup: a free draft taken from the history itself. Where the history's last n
// tokens (n = max_ngram down to 1) occurred before, the tokens that followed an earlier occurrence
// are the draft (as llama-cpp-python's LlamaPromptLookupDecoding and llama.cpp's ngram drafts). It
// costs no forward pass, so it pays wherever the text repeats its input: code edits, extraction,
// summaries quoting the source.
#pragma once

#include "llama.h"

#include <vector>

namespace ppow {

constexpr int kLookupMaxNgram = 2;
// How far back an occurrence's agreement with the history's tail is measured: a match that agrees
// over 9+ tokens is a copy in progress, one over 1-2 tokens a coincidence (their acceptance differs
// several-fold, so the auto policy keeps them apart: lookup_key).
constexpr int kLookupMatchMax = 16;
constexpr int kLookupKeys = 5;

struct LookupDraft {
    std::vector<llama_token> tokens;  // up to n_max; empty: no earlier occurrence of even the last token
    int ngram = 0;                    // length of the matched tail
    int match = 0;                    // how far back the chosen occurrence agrees (ngram..kLookupMatchMax)
};

// Of the occurrences of the longest matching tail, the one that agrees furthest back with the
// history (the latest of those): the copy most likely in progress.
LookupDraft lookup_draft(const std::vector<llama_token> & hist, int n_max, int max_ngram = kLookupMaxNgram);

// The acceptance table a match's windows are judged by (0..kLookupKeys-1): its agreement length in
// buckets 1, 2, 3-4, 5-8, 9+.
int lookup_key(int match);

}  // namespace ppow
