// drafter.h - what the engine asks of a drafter, and the one kind we have today: a small GGUF
// language model sharing the target's vocabulary (optionally a reduced draft vocabulary).
// A second kind (EAGLE-style drafters fed with the target's hidden states) implements the same
// interface; the engine only sees Drafter.
#pragma once

#include "model.h"
#include "sampling.h"

#include <functional>
#include <memory>
#include <vector>

namespace ppow {

struct DraftRequest {
    const std::vector<llama_token> * history = nullptr;  // committed tokens; back() is the newest
    int n_max = 0;
    const SamplingParams * sampling = nullptr;
    // Asked before keeping draft token j (0-based) whose drafter probability is `p`; false stops
    // the window there (the token is dropped). This is where the window policy lives.
    std::function<bool(int j, float p)> keep;
    bool need_confidence = false;  // greedy drafts compute p only when the policy reads it
};

struct DraftResult {
    std::vector<llama_token> tokens;
    std::vector<float> confidence;  // drafter probability of each kept token
    std::vector<Dist> dists;        // sampling mode: the drafter's distribution q per position
    double t_forward_ms = 0.0;      // drafter forward passes only
    int n_forward = 0;              // single-token forward passes (the per-token cost unit)
    void clear() { tokens.clear(); confidence.clear(); t_forward_ms = 0.0; n_forward = 0; }
};

class Drafter {
public:
    virtual ~Drafter() = default;
    virtual void draft(const DraftRequest & req, DraftResult & out, Rng & rng) = 0;
    virtual const char * kind() const = 0;
};

// A small causal LM in GGUF. If the file carries `ppow.draft_vocab.d2t`, its vocabulary is a subset
// of the target's: row i of its logits is target token d2t[i], and target tokens outside the subset
// are fed to it as its unknown token.
class ModelDrafter : public Drafter {
public:
    ModelDrafter(const ModelParams & params, const llama_vocab * target_vocab);
    void draft(const DraftRequest & req, DraftResult & out, Rng & rng) override;
    const char * kind() const override { return "model"; }
    int n_draft_vocab() const { return model_.n_vocab(); }
    bool reduced_vocab() const { return !d2t_.empty(); }
    LlamaModel & model() { return model_; }

private:
    llama_token to_draft(llama_token t) const { return d2t_.empty() ? t : t2d_[t]; }
    llama_token to_target(int row) const { return d2t_.empty() ? row : d2t_[row]; }

    LlamaModel model_;
    std::vector<int32_t> d2t_, t2d_;
    std::vector<llama_token> hist_draft_;  // history in the drafter's ids
    std::vector<int32_t> scratch_;
};

}  // namespace ppow
