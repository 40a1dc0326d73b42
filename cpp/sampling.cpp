#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace ppow {

int argmax(const float * logits, int n) {
    return (int) (std::max_element(logits, logits + n) - logits);
}

float softmax_prob(const float * logits, int n, int id) {
    const float mx = *std::max_element(logits, logits + n);
    double z = 0.0;
    for (int i = 0; i < n; ++i) z += std::exp(logits[i] - mx);
    return (float) (std::exp(logits[id] - mx) / z);
}

void make_dist(const float * logits, int n, const SamplingParams & sp, const int32_t * id_map, Dist & out,
               std::vector<int32_t> & idx) {
    const float inv_t = 1.0f / sp.temp;
    auto by_logit = [logits](int32_t a, int32_t b) { return logits[a] > logits[b]; };
    idx.resize(n);
    std::iota(idx.begin(), idx.end(), 0);
    int keep = n;
    if (sp.top_k > 0 && sp.top_k < n) {
        keep = sp.top_k;
        std::nth_element(idx.begin(), idx.begin() + keep, idx.end(), by_logit);
    }
    const float mx = *std::max_element(logits, logits + n);
    // Softmax over the kept candidates.
    out.ids.resize(keep);
    out.probs.resize(keep);
    double z = 0.0;
    for (int i = 0; i < keep; ++i) {
        const float e = std::exp((logits[idx[i]] - mx) * inv_t);
        out.probs[i] = e;
        z += e;
    }
    if (sp.top_p < 1.0f) {
        // Top-p needs the candidates in order, but usually only a few hundred of them: sort a
        // growing head until it holds top_p of the mass.
        int head = std::min(keep, 256);
        for (;;) {
            std::partial_sort(idx.begin(), idx.begin() + head, idx.begin() + keep, by_logit);
            double mass = 0.0;
            int cut = 0;
            while (cut < head && mass < sp.top_p * z) mass += std::exp((logits[idx[cut++]] - mx) * inv_t);
            if (mass >= sp.top_p * z || head == keep) {
                keep = std::max(cut, 1);
                break;
            }
            head = std::min(keep, head * 4);
        }
        out.ids.resize(keep);
        out.probs.resize(keep);
        z = 0.0;
        for (int i = 0; i < keep; ++i) {
            const float e = std::exp((logits[idx[i]] - mx) * inv_t);
            out.probs[i] = e;
            z += e;
        }
    }
    const float inv_z = (float) (1.0 / z);
    for (int i = 0; i < keep; ++i) {
        out.ids[i] = id_map ? id_map[idx[i]] : idx[i];
        out.probs[i] *= inv_z;
    }
}

float uniform(Rng & rng) {
    return std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
}

int32_t sample(const Dist & d, Rng & rng) {
    float u = uniform(rng);
    for (size_t i = 0; i < d.ids.size(); ++i) {
        u -= d.probs[i];
        if (u <= 0.0f) return d.ids[i];
    }
    return d.ids.back();  // rounding left a sliver of mass
}

void DenseProbs::set(const Dist & d) {
    for (size_t i = 0; i < d.ids.size(); ++i) p_[d.ids[i]] = d.probs[i];
}

void DenseProbs::reset(const Dist & d) {
    for (int32_t id : d.ids) p_[id] = 0.0f;
}

int32_t sample_residual(const Dist & p, const DenseProbs & q, Rng & rng) {
    double z = 0.0;
    for (size_t i = 0; i < p.ids.size(); ++i) z += std::max(0.0f, p.probs[i] - q.get(p.ids[i]));
    if (z <= 0.0) return sample(p, rng);
    double u = uniform(rng) * z;
    for (size_t i = 0; i < p.ids.size(); ++i) {
        u -= std::max(0.0f, p.probs[i] - q.get(p.ids[i]));
        if (u <= 0.0) return p.ids[i];
    }
    for (size_t i = p.ids.size(); i-- > 0;)
        if (p.probs[i] > q.get(p.ids[i])) return p.ids[i];
    return p.ids.back();
}

}  // namespace ppow
