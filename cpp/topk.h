// topk.h - a target row's top-k under the full softmax, and a temperature draw from it.
#pragma once

#include "sampling.h"

#include <cstdint>

namespace ppow {

// logits[n] -> argmax; the k largest ids (descending) and their probabilities under softmax(logits).
int topk_softmax(const float * logits, int n, int k, int32_t * ids, float * probs);

// One draw from softmax(logits / temp), temp > 0.
int sample_softmax(const float * logits, int n, float temp, Rng & rng);

}  // namespace ppow
