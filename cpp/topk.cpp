// topk.cpp - full-vocabulary softmax kernels for data generation. Built with -O3 -ffast-math
// (CMakeLists.txt) so the exp loops vectorise: a 262,144-wide row costs well under a millisecond.
#include "topk.h"

#include <algorithm>
#include <cmath>

namespace ppow {

int topk_softmax(const float * logits, int n, int k, int32_t * ids, float * probs) {
    float mx = logits[0];
    for (int i = 1; i < n; ++i) mx = std::max(mx, logits[i]);
    float z = 0.0f;
    for (int i = 0; i < n; ++i) z += std::exp(logits[i] - mx);  // vectorised: this file is built -O3 -ffast-math
    // Top-k by insertion into a short descending list; after the first few thousand logits almost
    // every candidate fails the first comparison.
    int have = 0;
    for (int i = 0; i < n; ++i) {
        const float v = logits[i];
        if (have == k && v <= logits[ids[k - 1]]) continue;
        int j = have < k ? have++ : k - 1;
        while (j > 0 && logits[ids[j - 1]] < v) {
            ids[j] = ids[j - 1];
            --j;
        }
        ids[j] = i;
    }
    for (int j = 0; j < k; ++j) probs[j] = j < have ? std::exp(logits[ids[j]] - mx) / z : 0.0f;
    for (int j = have; j < k; ++j) ids[j] = ids[0];
    return ids[0];
}

int sample_softmax(const float * logits, int n, float temp, Rng & rng) {
    float mx = logits[0];
    for (int i = 1; i < n; ++i) mx = std::max(mx, logits[i]);
    const float inv_t = 1.0f / temp;
    double z = 0.0;
    for (int i = 0; i < n; ++i) z += std::exp((logits[i] - mx) * inv_t);
    double u = uniform(rng) * z;
    for (int i = 0; i < n; ++i) {
        u -= std::exp((logits[i] - mx) * inv_t);
        if (u <= 0.0) return i;
    }
    return argmax(logits, n);
}

}  // namespace ppow
