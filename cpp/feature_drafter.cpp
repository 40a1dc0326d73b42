#include "feature_drafter.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace ppow {

namespace {
const char * kFcOut = "fc_out";
const char * kPrenorm = "eagle3_prenorm-0";

ModelParams with_ctx_other(ModelParams p, LlamaModel & target) {
    p.ctx_other = target.ctx();
    return p;
}

// Loader-level checks first, so a file that does not fit the target is named before llama.cpp runs.
void check_eagle3_file(const std::string & path, const LlamaModel & target) {
    GgufMeta meta(path);
    const std::string arch = meta.str("general.architecture");
    if (arch != "eagle3") throw Error("feature drafter " + path + " is not an eagle3 GGUF (architecture '" + arch + "')");
    const int64_t ht = meta.integer("eagle3.target_hidden_size", -1);
    if (ht != target.n_embd())
        throw Error("feature drafter " + path + " was made for a target with hidden size " + std::to_string(ht) +
                    ", this target's is " + std::to_string(target.n_embd()));
    const int64_t h = meta.integer("eagle3.embedding_length", -1);
    if (h != target.n_embd())
        throw Error("feature drafter " + path + " has hidden size " + std::to_string(h) +
                    " but borrows the target's token embeddings of size " + std::to_string(target.n_embd()));
    const int64_t nv = meta.integer("eagle3.vocab_size", -1);
    if (nv != target.n_vocab())
        throw Error("feature drafter " + path + " was made for a vocabulary of " + std::to_string(nv) +
                    " tokens, the target has " + std::to_string(target.n_vocab()));
}
}  // namespace

bool FeatureDrafter::is_feature_drafter(const std::string & path) {
    return GgufMeta(path).str("general.architecture") == "eagle3";
}

FeatureDrafter::FeatureDrafter(const ModelParams & params, LlamaModel & target)
    : model_((check_eagle3_file(params.path, target), with_ctx_other(params, target))) {
    for (int32_t k : gguf_int_array(params.path, "eagle3.target_layers")) {
        if (k < 0 || k >= target.n_layer())
            throw Error("feature drafter " + params.path + " reads target layer " + std::to_string(k) +
                        ", outside this target's layers 0.." + std::to_string(target.n_layer() - 1));
        layers_.push_back(k);
    }
    if (layers_.size() != 3) throw Error("feature drafter " + params.path + " must name exactly 3 target layers");
    for (int64_t id : GgufMeta(params.path).int_tensor("d2t")) {
        if (id < 0 || id >= target.n_vocab())
            throw Error("feature drafter " + params.path + ": d2t maps to token " + std::to_string(id) +
                        ", outside the target's vocabulary");
        d2t_.push_back((int32_t) id);
    }
    if (d2t_.empty()) {  // a full-vocabulary head
        d2t_.resize(target.n_vocab());
        for (int i = 0; i < target.n_vocab(); ++i) d2t_[i] = i;
    }
    h_target_ = target.n_embd();
    h_ = model_.n_embd();
    const int nb = model_.n_batch();
    enc_ = llama_batch_init(nb, 3 * h_target_, 1);
    dec_ = llama_batch_init(nb, h_, 1);
    dec_.token = (llama_token *) std::malloc(sizeof(llama_token) * nb);  // freed by llama_batch_free
    lg_.resize(d2t_.size());
}

FeatureDrafter::~FeatureDrafter() {
    llama_batch_free(enc_);
    llama_batch_free(dec_);
}

// A new generation reuses the target's cache as far as it can; where the features of reused positions
// are missing (decoded while capture was off), they start over after them (a gap, as in add_features).
void FeatureDrafter::begin(int keep) {
    n_feat_ = std::min(n_feat_, keep);
    feat0_ = std::min(feat0_, n_feat_);
    feats_.resize((size_t) (n_feat_ - feat0_) * 3 * h_target_);
    // Entry j pairs token[j+1] with features[j]: it stays valid while token[j+1] is kept.
    n_entries_ = std::max(0, std::min(n_entries_, keep - 1));
    drop_kv_from(n_entries_);
}

void FeatureDrafter::add_features(int pos0, int n, const FeatureCapture & cap) {
    if (n <= 0) return;
    if (pos0 < n_feat_)
        throw Error("feature drafter: features for position " + std::to_string(pos0) + " arrived, expected " +
                    std::to_string(n_feat_));
    if (pos0 > n_feat_) {  // positions decoded without capture: start the features over
        feats_.clear();
        feat0_ = n_feat_ = pos0;
    }
    const int have = n_feat_ - feat0_;
    feats_.resize((size_t) (have + n) * 3 * h_target_);
    for (int i = 0; i < n; ++i) {
        float * row = feats_.data() + (size_t) (have + i) * 3 * h_target_;
        for (int l = 0; l < 3; ++l) std::copy_n(cap.rows(l) + (size_t) i * h_target_, h_target_, row + l * h_target_);
    }
    n_feat_ += n;
}

void FeatureDrafter::drop_kv_from(int pos) {
    if (n_kv_ <= pos) return;
    llama_memory_seq_rm(llama_get_memory(model_.ctx()), 0, pos, -1);
    n_kv_ = pos;
}


void FeatureDrafter::encode(int pos0, int n, int row0) {
    if (row0 < 0) row0 = pos0 - feat0_;
    FeatureCapture & cap = model_.capture();
    cap.set_nodes({kFcOut});
    g_.resize((size_t) n * h_);
    const size_t row = (size_t) 3 * h_target_;
    for (int start = 0; start < n; start += model_.n_batch()) {
        const int m = std::min(model_.n_batch(), n - start);
        enc_.n_tokens = m;
        std::copy_n(feats_.data() + (size_t) (row0 + start) * row, (size_t) m * row, enc_.embd);
        for (int i = 0; i < m; ++i) {
            enc_.pos[i] = pos0 + start + i;
            enc_.n_seq_id[i] = 1;
            enc_.seq_id[i][0] = 0;
            enc_.logits[i] = true;
        }
        cap.clear();
        cap.begin_ubatch(m, m);
        const int rc = llama_encode(model_.ctx(), enc_);
        if (rc == 2) throw Error("cancelled");  // aborted by cancel(): nothing was taken in yet
        if (rc != 0) throw Error("feature drafter: encoding target features failed (code " + std::to_string(rc) + ")");
        llama_synchronize(model_.ctx());
        cap.end_ubatch();
        std::copy_n(cap.rows(0), (size_t) m * h_, g_.data() + (size_t) start * h_);
    }
}

void FeatureDrafter::decode(const llama_token * tokens, const float * states, int pos0, int n) {
    FeatureCapture & cap = model_.capture();
    cap.set_nodes({kPrenorm});
    for (int start = 0; start < n; start += model_.n_batch()) {
        const int m = std::min(model_.n_batch(), n - start);
        dec_.n_tokens = m;
        std::copy_n(tokens + start, m, dec_.token);
        std::copy_n(states + (size_t) start * h_, (size_t) m * h_, dec_.embd);
        for (int i = 0; i < m; ++i) {
            dec_.pos[i] = pos0 + start + i;
            dec_.n_seq_id[i] = 1;
            dec_.seq_id[i][0] = 0;
            // The eagle3 graph computes its head for every row; marking them all as outputs is
            // what llama.cpp supports (a partial set returns the wrong rows).
            dec_.logits[i] = true;
        }
        cap.clear();
        cap.begin_ubatch(m, m);
        const int rc = llama_decode(model_.ctx(), dec_);
        if (rc == 2) throw Error("cancelled");
        if (rc != 0) throw Error("feature drafter: llama_decode failed (code " + std::to_string(rc) + ")");
        llama_synchronize(model_.ctx());
        cap.end_ubatch();
        n_kv_ = pos0 + start + m;
        if (start + m == n) state_.assign(cap.rows(0) + (size_t) (m - 1) * h_, cap.rows(0) + (size_t) m * h_);
    }
}

double FeatureDrafter::time_step() {
    if (n_kv_ + 1 > model_.n_ctx()) return 0.0;
    const int base = n_kv_;
    const std::vector<float> state(h_, 0.0f);
    const llama_token tok = d2t_[0];
    const double t0 = now_ms();
    decode(&tok, state.data(), base, 1);
    const double ms = now_ms() - t0;
    drop_kv_from(base);
    return ms;
}

double FeatureDrafter::time_catchup(int n) {
    if (n < 1 || n_kv_ + n > model_.n_ctx() || n > model_.n_batch()) return 0.0;
    // n throw-away entries (zero features, kept after the features held) right after the drafter's
    // cache, timed as draft() runs them, then dropped. Their positions follow the cache, not the
    // features: after a window the target's features run ahead of the entries, and llama.cpp refuses
    // a batch whose positions do not continue the sequence.
    const int base = n_kv_, rows = n_feat_ - feat0_;
    feats_.resize((size_t) (rows + n) * 3 * h_target_, 0.0f);
    const std::vector<llama_token> toks(n, d2t_[0]);
    const double t0 = now_ms();
    encode(base, n, rows);
    decode(toks.data(), g_.data(), base, n);
    const double ms = now_ms() - t0;
    drop_kv_from(base);
    feats_.resize((size_t) rows * 3 * h_target_);
    return ms / n;
}

int FeatureDrafter::next_entry(int n) const {
    return std::max({std::min(n_entries_, n), feat0_, n + 1 - kMaxCatchup});
}

int FeatureDrafter::behind(int n_hist) const {
    const int n = n_hist - 2;
    return n < 0 ? 1 : n + 1 - next_entry(n);
}

bool FeatureDrafter::ready(int n_hist) const {
    const int n = n_hist - 2;
    return n >= 0 && feat0_ <= n && n_feat_ >= n + 1;
}

void FeatureDrafter::draft(const DraftRequest & req, DraftResult & out, Rng & rng) {
    out.clear();
    const auto & hist = *req.history;
    const int n = (int) hist.size() - 2;  // the newest entry is at position n: (hist.back(), features[n])
    const int n_max = std::min(req.n_max, model_.n_ctx() - (int) hist.size());
    if (n_max <= 0 || n < 0) return;
    if (!ready((int) hist.size()))
        throw Error("feature drafter: target features cover positions " + std::to_string(feat0_) + ".." +
                    std::to_string(n_feat_ - 1) + ", the window starts after " + std::to_string(n));

    // Catch up: every committed position without an entry made from target features, in one batch.
    const double t0 = now_ms();
    n_entries_ = std::min(n_entries_, n);  // position n's entry is (re)made now: its logits open the window
    drop_kv_from(n_entries_);
    // After a long run of plain steps (or a long prompt) only the most recent positions enter: the
    // drafter reads the target's features there, and the catch-up of a useless drafter's rare probe
    // windows stays bounded; positions decoded without capture cannot enter at all. llama.cpp wants
    // a sequence's positions consecutive, so skipping restarts the drafter's cache at the first
    // position kept (RoPE positions stay the true ones).
    const int max_catchup = std::max(1, std::min(kMaxCatchup, req.max_catchup));
    const int first = std::max({n_entries_, feat0_, n + 1 - max_catchup});
    if (first > n_entries_) {
        n_entries_ = first;
        drop_kv_from(0);
    }
    const int m = n + 1 - n_entries_;
    encode(n_entries_, m);
    decode(hist.data() + n_entries_ + 1, g_.data(), n_entries_, m);
    n_entries_ = n + 1;
    out.t_catchup_ms = now_ms() - t0;
    out.n_catchup = m;
    out.t_forward_ms += out.t_catchup_ms;
    out.n_forward += 1;

    const int nd = (int) d2t_.size();
    if ((int) out.dists.size() < n_max) out.dists.resize(n_max);
    for (int j = 0; j < n_max; ++j) {
        // Full-vocabulary row, -inf outside the draft vocabulary: read only the d2t entries.
        const float * row = llama_get_logits_ith(model_.ctx(), -1);
        for (int i = 0; i < nd; ++i) lg_[i] = row[d2t_[i]];
        if (req.logits_out) req.logits_out->insert(req.logits_out->end(), lg_.begin(), lg_.end());
        float p;
        const llama_token tok = pick_draft_token(lg_.data(), nd, d2t_.data(), req, out.dists[j], scratch_, rng, p);
        if (req.keep && !req.keep(j, p)) break;
        out.tokens.push_back(tok);
        out.confidence.push_back(p);
        if (j + 1 == n_max) break;
        const double t1 = now_ms();
        decode(&tok, state_.data(), n + 1 + j, 1);  // copies the state into its batch before it changes
        out.t_forward_ms += now_ms() - t1;
        out.n_forward += 1;
    }
}

}  // namespace ppow
