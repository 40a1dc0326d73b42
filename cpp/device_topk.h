// device_topk.h - the data engine's per-row top-k computed by the target's own backend (llama.cpp's
// backend sampling API): the full-vocabulary softmax, the k largest ids and the argmax run inside the
// decode graph, so k ids and k probabilities per row leave the device instead of the whole row of
// logits (1 MiB for Gemma's 262,144 entries) and its softmax on a host thread, which together were
// most of a GPU step.
#pragma once

#include "llama.h"

namespace ppow {

// A sampler chain (llama_set_sampler takes chains only) holding one ppow top-k sampler: greedy
// choice (argmax), the k largest ids (in no particular order) and their probabilities under the full
// softmax at temperature 1. The caller frees it with llama_sampler_free after detaching it.
llama_sampler * make_device_topk_chain(int k);

}  // namespace ppow
