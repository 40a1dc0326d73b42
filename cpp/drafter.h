// drafter.h - what the engine asks of a drafter, and its two kinds: ModelDrafter, a small GGUF
// language model sharing the target's vocabulary (optionally a reduced draft vocabulary), and
// FeatureDrafter (feature_drafter.h), an EAGLE-3 drafter fed with the target's hidden states.
// The engine only sees Drafter.
#pragma once

#include "model.h"
#include "sampling.h"

#include <algorithm>
#include <climits>
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
    std::vector<float> * logits_out = nullptr;  // if set: each step's draft-vocabulary logits, appended
    // Take in at most this many of the latest committed positions not yet taken in (a probe after a
    // long plain run should cost a few positions, not the whole run); each drafter's own cap applies too.
    int max_catchup = 1 << 30;
};

struct DraftResult {
    std::vector<llama_token> tokens;
    std::vector<float> confidence;  // drafter probability of each kept token
    std::vector<Dist> dists;        // sampling mode: the drafter's distribution q per position
    double t_forward_ms = 0.0;      // drafter forward passes only (catch-up included)
    int n_forward = 0;              // single-token forward passes (the per-token cost unit)
    double t_catchup_ms = 0.0;      // part of t_forward_ms: bringing the drafter up to the history
    int n_catchup = 0;              // committed positions it took in for that
    void clear() {
        tokens.clear();
        confidence.clear();
        t_forward_ms = t_catchup_ms = 0.0;
        n_forward = n_catchup = 0;
    }
};

// One draft token from a row of draft-vocabulary logits (row i is target id_map[i]; no map: i):
// the argmax, or a draw from make_dist when req.sampling is not greedy (the distribution goes to q).
// p gets the token's drafter probability (-1 for greedy drafts when req.need_confidence is off).
llama_token pick_draft_token(const float * logits, int n, const int32_t * id_map, const DraftRequest & req, Dist & q,
                             std::vector<int32_t> & scratch, Rng & rng, float & p);

class Drafter {
public:
    virtual ~Drafter() = default;
    virtual void draft(const DraftRequest & req, DraftResult & out, Rng & rng) = 0;
    virtual const char * kind() const = 0;
    virtual LlamaModel & model() = 0;  // its own context (calibration, cancel)
    // Time of one single-token draft step (for the cost model), leaving the drafter as it was.
    virtual double time_step() = 0;
    // Feature drafters: ms per committed position of a catch-up batch of n positions (0: no catch-up).
    virtual double time_catchup(int n) { (void) n; return 0.0; }

    // Feature drafters read the target's hidden states at these layers (capture.h numbering) of
    // every committed position; the engine captures them on every target decode.
    virtual const std::vector<int> & target_layers() const {
        static const std::vector<int> none;
        return none;
    }
    // Committed positions (of a history of n_hist tokens) it would take in at its next window: its
    // catch-up, bounded as draft() bounds it; 1 when it is in step.
    virtual int behind(int n_hist) const { (void) n_hist; return 1; }
    // Whether it can draft after a history of n_hist tokens now (a feature drafter needs the target's
    // features of the newest committed position, captured only while drafting is likely).
    virtual bool ready(int n_hist) const { (void) n_hist; return true; }
    // A new generation keeps the first `keep` positions of the target's cache.
    virtual void begin(int keep) { (void) keep; }
    // The target committed positions pos0..pos0+n-1; their features are the capture's first n rows.
    virtual void add_features(int pos0, int n, const FeatureCapture & cap) { (void) pos0, (void) n, (void) cap; }
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
    LlamaModel & model() override { return model_; }
    double time_step() override;
    double time_catchup(int n) override;
    int behind(int n_hist) const override;
    void begin(int keep) override { synced_ = std::min(synced_, keep); }

    // Most committed tokens one catch-up takes in: after a longer idle run the drafter's cache restarts
    // with the latest ones (its context then begins there; positions restart at 0).
    static constexpr int kMaxCatchup = 256;

private:
    llama_token to_draft(llama_token t) const { return d2t_.empty() ? t : t2d_[t]; }

    LlamaModel model_;
    std::vector<int32_t> d2t_, t2d_;
    std::vector<llama_token> hist_draft_;  // history in the drafter's ids, from base_
    int base_ = 0;                         // history index of the drafter's cache position 0
    int synced_ = 0;                       // history length at its last catch-up
    std::vector<int32_t> scratch_;
};

}  // namespace ppow
