#include "drafter.h"

#include "gguf_check.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace ppow {

static std::string token_text(const llama_vocab * v, llama_token t) {
    const char * s = llama_vocab_get_text(v, t);
    return s ? s : "";
}

ModelDrafter::ModelDrafter(const ModelParams & params, const llama_vocab * tv) : model_(params) {
    const int n_target = llama_vocab_n_tokens(tv);
    // GGUF keys as in python/ppow/gguf_keys.py (written by ppow-convert)
    d2t_ = gguf_int_array(params.path, "ppow.draft_vocab.d2t");
    const llama_vocab * dv = model_.vocab();
    if (d2t_.empty()) {
        // Same vocabulary required: same size and the same token strings (spot-checked).
        if (model_.n_vocab() != n_target)
            throw Error("drafter vocabulary (" + std::to_string(model_.n_vocab()) +
                        " tokens) does not match the target's (" + std::to_string(n_target) + " tokens)");
        require_vocabulary(dv, params.path, "drafter without a draft-vocabulary map");
        for (int t : {0, 1, 2, n_target / 3, n_target / 2, n_target - 1})
            if (token_text(dv, t) != token_text(tv, t))
                throw Error("drafter vocabulary differs from the target's at token " + std::to_string(t));
        return;
    }
    if ((int) d2t_.size() != model_.n_vocab())
        throw Error("drafter draft-vocabulary map has " + std::to_string(d2t_.size()) + " entries but the drafter has " +
                    std::to_string(model_.n_vocab()) + " tokens");
    t2d_.assign(n_target, -1);
    for (int i = 0; i < (int) d2t_.size(); ++i) {
        if (d2t_[i] < 0 || d2t_[i] >= n_target)
            throw Error("drafter draft-vocabulary map points outside the target vocabulary (" +
                        std::to_string(d2t_[i]) + " >= " + std::to_string(n_target) + ")");
        t2d_[d2t_[i]] = i;
    }
    // Target tokens outside the draft vocabulary are fed as the draft id the converter recorded.
    char buf[32] = {0};
    llama_token unk = 0;
    if (llama_model_meta_val_str(model_.model(), "ppow.draft_vocab.unk_id", buf, sizeof buf) > 0) unk = std::atoi(buf);
    if (unk < 0 || unk >= (int) d2t_.size()) unk = 0;
    for (auto & x : t2d_)
        if (x < 0) x = unk;
}

llama_token pick_draft_token(const float * lg, int n, const int32_t * id_map, const DraftRequest & req, Dist & q,
                             std::vector<int32_t> & scratch, Rng & rng, float & p) {
    p = -1.0f;  // unknown unless computed
    if (req.sampling->greedy()) {
        const int row = argmax(lg, n);
        if (req.need_confidence) p = softmax_prob(lg, n, row);
        return id_map ? id_map[row] : row;
    }
    make_dist(lg, n, *req.sampling, id_map, q, scratch);
    const llama_token tok = sample(q, rng);
    for (size_t i = 0; i < q.ids.size(); ++i)
        if (q.ids[i] == tok) { p = q.probs[i]; break; }
    return tok;
}

double ModelDrafter::time_step() {
    const int base = (int) model_.cached().size();
    if (base + 1 > model_.n_ctx()) return 0.0;
    const llama_token tok = 0;
    const double ms = model_.decode(&tok, 1, 1);
    model_.truncate(base);
    return ms;
}

double ModelDrafter::time_catchup(int n) {
    const int base = (int) model_.cached().size();
    if (n < 1 || base + n > model_.n_ctx() || n > model_.n_batch()) return 0.0;
    const std::vector<llama_token> toks(n, 0);
    const double ms = model_.decode(toks.data(), n, 1);
    model_.truncate(base);
    return ms / n;
}

int ModelDrafter::behind(int n_hist) const {
    return std::max(1, std::min(kMaxCatchup, n_hist - synced_ + 1));
}

void ModelDrafter::draft(const DraftRequest & req, DraftResult & out, Rng & rng) {
    out.clear();
    const auto & hist = *req.history;
    const int n = (int) hist.size();
    const int room = model_.n_ctx() - n;
    const int n_max = std::min(req.n_max, room);
    if (n_max <= 0 || hist.empty()) return;

    // Bring the drafter's cache up to the committed history (lazily: only when it drafts): keep the
    // common prefix, decode the rest in one batch (at least the newest token, whose logits start the
    // window). After a long idle run only the latest kMaxCatchup tokens enter (a probe's: its
    // req.max_catchup), from an empty cache.
    const int max_catchup = std::max(1, std::min(kMaxCatchup, req.max_catchup));
    if (base_ > n) base_ = 0;
    hist_draft_.resize(n - base_);
    for (int i = base_; i < n; ++i) hist_draft_[i - base_] = to_draft(hist[i]);
    int keep = model_.common_prefix(hist_draft_, 1);
    if ((int) hist_draft_.size() - keep > max_catchup || (base_ > 0 && keep == 0)) {
        base_ = std::max(0, n - max_catchup);
        hist_draft_.resize(n - base_);
        for (int i = base_; i < n; ++i) hist_draft_[i - base_] = to_draft(hist[i]);
        keep = 0;
    }
    model_.truncate(keep);
    const int m = (int) hist_draft_.size() - keep;
    const double t_sync = model_.decode(hist_draft_.data() + keep, m, 1);
    synced_ = n;
    out.t_forward_ms += t_sync;
    out.n_forward += 1;
    out.t_catchup_ms = t_sync;  // its last row is the first draft step, as a feature drafter's
    out.n_catchup = m;

    const int nv = model_.n_vocab();
    const int32_t * id_map = d2t_.empty() ? nullptr : d2t_.data();
    if ((int) out.dists.size() < n_max) out.dists.resize(n_max);
    for (int j = 0; j < n_max; ++j) {
        const float * lg = model_.logits(0);
        if (req.logits_out) req.logits_out->insert(req.logits_out->end(), lg, lg + nv);
        float p;
        const llama_token tok = pick_draft_token(lg, nv, id_map, req, out.dists[j], scratch_, rng, p);
        if (req.keep && !req.keep(j, p)) break;
        out.tokens.push_back(tok);
        out.confidence.push_back(p);
        if (j + 1 == n_max) break;  // the last draft token needs no forward pass
        const llama_token td = to_draft(tok);
        out.t_forward_ms += model_.decode(&td, 1, 1);
        out.n_forward += 1;
    }
}

}  // namespace ppow
