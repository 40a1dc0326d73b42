// sampling.h - target/drafter distributions on the host: argmax, temperature/top-k/top-p, and
// the speculative-sampling accept/residual rule. Work is proportional to the support kept.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace ppow {

struct SamplingParams {
    float temp = 0.0f;   // 0: greedy
    int top_k = 0;       // 0: off
    float top_p = 1.0f;  // 1: off
    uint64_t seed = 0;
    bool greedy() const { return temp <= 0.0f; }
};

// A normalised distribution over a subset of token ids (the rest has probability 0).
struct Dist {
    std::vector<int32_t> ids;
    std::vector<float> probs;
    void clear() { ids.clear(); probs.clear(); }
};

using Rng = std::mt19937_64;

int argmax(const float * logits, int n);
// Probability the softmax (temperature 1) puts on `id`: the drafter's confidence in its pick.
float softmax_prob(const float * logits, int n, int id);

// Logits -> temperature, top-k, top-p -> normalised Dist. `id_map` (optional) maps row index to
// token id (a reduced draft vocabulary); scratch is reused between calls.
void make_dist(const float * logits, int n, const SamplingParams & sp, const int32_t * id_map, Dist & out,
               std::vector<int32_t> & scratch);

int32_t sample(const Dist & d, Rng & rng);
float uniform(Rng & rng);

// Dense lookup over the full vocabulary for one Dist at a time: set() then get(), reset() after.
class DenseProbs {
public:
    void resize(int n_vocab) { p_.assign(n_vocab, 0.0f); }
    void set(const Dist & d);
    void reset(const Dist & d);
    float get(int32_t id) const { return p_[id]; }
private:
    std::vector<float> p_;
};

// Sample from norm(max(0, p - q)): what speculative sampling draws after a rejection.
// q_dense must hold q (set()). Falls back to p if the residual is empty (p == q).
int32_t sample_residual(const Dist & p, const DenseProbs & q_dense, Rng & rng);

}  // namespace ppow
