// feature_drafter.h - an EAGLE-3 drafter in llama.cpp's own `eagle3` GGUF format, fed with the
// target's hidden states.
//
// The GGUF holds fc (3 target layers -> H), one decoder layer over [norm(token embedding);
// norm(state)], the output norm and a reduced output head with `d2t` (draft row -> target id); the
// token embeddings are the target's, borrowed through llama.cpp's ctx_other. Pairing, as llama.cpp's
// common/speculative.cpp: the drafter's entry at position p holds (token[p+1], fc(features[p])) and
// predicts token[p+2]; each later draft step feeds back the drafter's own state before its final
// norm (`eagle3_prenorm-0`). Entries made from target features are kept across steps; entries fed
// with draft tokens are dropped and rebuilt from the target's features once those tokens commit.
#pragma once

#include "drafter.h"

namespace ppow {

class FeatureDrafter : public Drafter {
public:
    // Most committed positions one catch-up batch takes in (see draft()).
    static constexpr int kMaxCatchup = 64;

    // `target` must outlive the drafter (its context lends the token embeddings).
    FeatureDrafter(const ModelParams & params, LlamaModel & target);
    ~FeatureDrafter() override;

    void draft(const DraftRequest & req, DraftResult & out, Rng & rng) override;
    const char * kind() const override { return "feature"; }
    LlamaModel & model() override { return model_; }
    double time_step() override;
    double time_catchup(int n) override;
    const std::vector<int> & target_layers() const override { return layers_; }
    int behind(int n_hist) const override;
    bool ready(int n_hist) const override;
    void begin(int keep) override;
    void add_features(int pos0, int n, const FeatureCapture & cap) override;
    int n_draft_vocab() const { return (int) d2t_.size(); }

    // True for a GGUF whose general.architecture is eagle3.
    static bool is_feature_drafter(const std::string & path);

private:
    // fc over n stored feature rows from row0 (default: pos0's), at positions pos0.. -> g_ (n rows of H).
    void encode(int pos0, int n, int row0 = -1);
    // The first position whose entry the next catch-up makes (its entries and features run on from there).
    int next_entry(int n) const;
    // Decoder entries at positions pos0.. with (tokens[i], states row i); keeps the last row's logits
    // in the context and its state in state_.
    void decode(const llama_token * tokens, const float * states, int pos0, int n);
    void drop_kv_from(int pos);

    LlamaModel model_;
    std::vector<int> layers_;
    std::vector<int32_t> d2t_;
    int h_target_ = 0, h_ = 0;
    // [n_feat_ - feat0_, 3 * h_target_]: target features of committed positions feat0_..n_feat_-1.
    // The engine captures them only while drafting is likely; a gap restarts them (and the entries).
    std::vector<float> feats_;
    int feat0_ = 0, n_feat_ = 0;
    int n_entries_ = 0;         // next position to enter from target features (earlier ones are in the KV or skipped)
    int n_kv_ = 0;              // entries in the KV, draft-fed ones included
    llama_batch enc_{}, dec_{};
    std::vector<float> g_, state_, lg_;
    std::vector<int32_t> scratch_;
};

}  // namespace ppow
