#include "engine.h"

#include "feature_drafter.h"
#include "gguf_check.h"
#include "lookup.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace ppow {

Engine::Engine(const ModelParams & target, const std::optional<ModelParams> & drafter) : target_(target) {
    target_.set_abort_flag(&cancel_flag_);
    require_vocabulary(target_.vocab(), target_.path(), "target");
    if (drafter) {
        ModelParams dp = *drafter;
        dp.n_ctx = target_.n_ctx();  // the drafter follows the same history
        dp.batch_invariant = false;  // its logits only shape proposals, never the output
        dp.pad_rows = 0;
        if (dp.kind != "auto" && dp.kind != "model" && dp.kind != "feature")
            throw Error("drafter kind must be auto, model or feature, got '" + dp.kind + "'");
        const bool feature = FeatureDrafter::is_feature_drafter(dp.path);
        if (dp.kind == "model" && feature)
            throw Error("drafter " + dp.path + " is an eagle3 feature drafter, not a model drafter");
        if (dp.kind == "feature" || feature)
            drafter_ = std::make_unique<FeatureDrafter>(dp, target_);
        else
            drafter_ = std::make_unique<ModelDrafter>(dp, target_.vocab());
        drafter_->model().set_abort_flag(&cancel_flag_);
    }
    q_dense_.resize(target_.n_vocab());
    int vbm = target_.fixed_width() > 0 ? target_.fixed_width() : kCpuInvariantRows;
    if (const char * env = std::getenv("PPOW_VERIFY_BATCH_MAX"); env && *env) {
        char * end = nullptr;
        const long v = std::strtol(env, &end, 10);
        if (*end != '\0' || v < 1 || v > 64)
            throw Error(std::string("PPOW_VERIFY_BATCH_MAX must be an integer in [1, 64], got '") + env + "'");
        vbm = (int) v;
    }
    set_verify_batch_max(vbm);
}

void Engine::set_verify_batch_max(int n) {
    verify_batch_max_ = std::max(1, n);
    costs_.set_chunk(verify_batch_max_);
    exactness_ = judge_exactness();
}

Exactness Engine::judge_exactness() const {
    // Row counts a generation decode can have: 1..verify_batch_max real rows, padded up to pad_rows.
    const int vbm = verify_batch_max_, W = target_.pad_rows();
    const int widest = std::max(vbm, W);
    const std::string shape = "verify batches of up to " + std::to_string(vbm) + " rows" +
                              (W > 0 ? ", every decode padded to at least " + std::to_string(W) + " rows" : "");
    if (target_.gpu_layers() > 0) {
        const std::string where = std::to_string(target_.gpu_layers()) + " of " +
                                  std::to_string(target_.n_layer() + 1) + " target layers on " + LlamaModel::gpu_devices();
        const bool cuda = LlamaModel::gpu_devices().rfind("CUDA", 0) == 0;
        if (W >= 2 && vbm <= W && cuda)
            return {true, where + ", every decode exactly " + std::to_string(W) +
                              " rows: plain steps and verify batches run the same kernels (measured on an NVIDIA "
                              "H200: 0 of 24 prompts differed from plain greedy at widths 4 and 8, feature drafter "
                              "and prompt lookup, fixed and auto; docs/gpu.md)"};
        return {false, where + " (" + shape + "): " +
                           (W >= 2 && vbm <= W ? std::string("a fixed decode width is measured exact on CUDA only")
                                               : std::string("decodes of different row counts take different "
                                                             "kernels there (pad_rows fixes the width)")) +
                           "; exactness is not established, so greedy speculative output may differ from plain "
                           "greedy output"};
    }
    if (widest > kCpuInvariantRows)
        return {false, "CPU backend with " + shape + ": batches of 8 or more rows take other matmul kernels "
                       "there, whose last bits differ from smaller batches'"};
    const bool one_row_ok = W >= 2 || (!target_.float_matrices() &&
                                        (target_.pads_single() || target_.ref_attention() ||
                                         (target_.flash_attn() && target_.n_threads() == 1)));
    if (!one_row_ok)
        return {false, std::string("CPU backend without batch-invariant one-token decodes (") +
                           (target_.params().batch_invariant ? "" : "batch_invariant off; ") +
                           (target_.float_matrices() ? "F32/F16/BF16 matrices take llamafile's sgemm from 2 rows, "
                                                       "another summation order than one row's"
                            : target_.flash_attn() ? "flash attention splits a one-query decode's KV among threads "
                                                     "past 256 cached tokens"
                                                   : "without flash attention a one-token decode takes another "
                                                     "attention kernel") +
                           "), so plain steps may round differently from verify batches"};
    std::string how = W >= 2 ? "every decode padded to " + std::to_string(W) + " rows" +
                                   (target_.float_matrices() && target_.params().pad_rows < 2 ? " (F32/F16/BF16 matrices)" : "")
                      : target_.pads_single() ? std::string("one-token decodes padded to two rows") +
                                                    (target_.flash_attn() ? " past 192 cached tokens" : "")
                      : target_.ref_attention() ? std::string("flash attention's per-row kernel for every generation "
                                                              "decode (ggml's use_ref switch)")
                                              : std::string("flash attention on one thread");
    return {true, "CPU backend, batch-invariant decoding: " + how + ", verify batches of at most " +
                      std::to_string(vbm) + " rows, no weight repacking"};
}

std::vector<llama_token> Engine::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    const int cap = (int) text.size() + 2;
    std::vector<llama_token> out(cap);
    int n = llama_tokenize(target_.vocab(), text.data(), (int) text.size(), out.data(), cap, add_special, parse_special);
    if (n < 0) {
        out.resize(-n);
        n = llama_tokenize(target_.vocab(), text.data(), (int) text.size(), out.data(), -n, add_special, parse_special);
    }
    out.resize(std::max(n, 0));
    return out;
}

std::string Engine::token_piece(llama_token t) const {
    char buf[256];
    int n = llama_token_to_piece(target_.vocab(), t, buf, sizeof buf, 0, false);
    if (n >= 0) return std::string(buf, n);
    std::string s(-n, '\0');
    n = llama_token_to_piece(target_.vocab(), t, s.data(), (int) s.size(), 0, false);
    return s.substr(0, std::max(n, 0));
}

std::string Engine::detokenize(const std::vector<llama_token> & tokens) const {
    for (llama_token t : tokens)
        if (t < 0 || t >= target_.n_vocab()) throw Error("token id " + std::to_string(t) + " is outside the vocabulary");
    std::string s(tokens.size() * 8 + 16, '\0');
    int n = llama_detokenize(target_.vocab(), tokens.data(), (int) tokens.size(), s.data(), (int) s.size(), false, false);
    if (n < 0) {
        s.resize(-n);
        n = llama_detokenize(target_.vocab(), tokens.data(), (int) tokens.size(), s.data(), (int) s.size(), false, false);
    }
    s.resize(std::max(n, 0));
    return s;
}

void Engine::calibrate(int k_max) {
    // Time forward passes at the current depth with throwaway tokens, then drop them again.
    const int base = (int) target_.cached().size();
    const llama_token filler = std::max(0, target_.cached().empty() ? bos() : target_.cached().back());
    std::vector<int> sizes = {1, 2, 3};
    const int n_max = std::min(k_max + 1, verify_batch_max_);
    for (int n = 5; n <= n_max; n = 2 * n - 1) sizes.push_back(n);
    if (sizes.back() < n_max) sizes.push_back(n_max);
    auto verify = [&](int n) {
        if (base + n > target_.n_ctx()) return 0.0;
        const std::vector<llama_token> toks(n, filler);
        const double ms = target_.decode(toks.data(), n, n);
        target_.truncate(base);
        return ms;
    };
    std::function<double()> step, catchup;
    if (drafter_) {
        step = [&] { return drafter_->time_step(); };
        // A typical catch-up takes in the committed token and one accepted draft.
        catchup = [&] { return drafter_->time_catchup(2); };
    }
    costs_.calibrate(sizes, verify, step, catchup);
}

int Engine::choose_window(const GenParams & gp, int k_cap, int n_hist, int remaining, bool & probe) {
    probe = false;
    plain_by_policy_ = false;
    probe_soon_ = false;
    if (k_cap <= 0) return 0;
    if (gp.policy == DraftPolicy::Fixed) return k_cap;
    if (!costs_.calibrated()) calibrate(gp.draft_max);
    if (!costs_.speculation_can_pay(k_cap)) {  // not even perfect drafts would pay here
        plain_by_policy_ = true;
        return 0;
    }
    double gain = 0.0;
    const int k = costs_.best_window(k_cap, &gain);
    // Average acceptance may say "plain" while the drafter's confident tokens still pay: then draft
    // every step and let the stop rule keep only what pays (often nothing: a plain step).
    const double gated = costs_.gated_gain();
    const bool use_gated = gated > std::max(1.0, gain);
    if (use_gated || k > 0) {
        // A drafter left idle first takes in the positions it missed (bounded; in step its own
        // catch-up is in the step cost): resume only where what drafting is expected to gain over
        // the rest of this generation pays for that.
        const int missed = drafter_->behind(n_hist) - last_commit_;
        const double extra = costs_.catchup_extra_ms(missed);
        const double per_step = ((use_gated ? gated : gain) - 1.0) * costs_.verify_ms(1);
        if (extra <= 0.0 || per_step * remaining > extra) return use_gated ? k_cap : k;
    }
    // Plain decoding looks best; probe now and then (backing off) so the estimates can recover.
    plain_by_policy_ = true;
    if (plain_since_probe_ + 1 < probe_interval_) {
        ++plain_since_probe_;
        probe_soon_ = plain_since_probe_ + kCaptureAhead >= probe_interval_;
        return 0;
    }
    probe_soon_ = true;
    if (!drafter_->ready(n_hist)) return 0;  // a probe needs the newest features: next step
    plain_since_probe_ = 0;
    probe = true;
    return std::min(k_cap, 2);
}

bool Engine::capture_wanted(const GenParams & gp, int drafted) const {
    if (gp.policy == DraftPolicy::Fixed || drafted > 0 || !plain_by_policy_) return true;
    return probe_soon_;
}

int Engine::lookup_window(const GenParams & gp, const std::vector<llama_token> & hist, int k_cap, bool speculate) {
    const LookupDraft found = lookup_draft(hist, k_cap);
    const std::vector<llama_token> & cand = found.tokens;
    const int key = lookup_key(found.match);
    int k = (int) cand.size();
    if (k == 0) return -1;
    if (gp.policy == DraftPolicy::Auto) {
        // Against the better of plain decoding and the drafter's own expected gain.
        if (!costs_.calibrated()) calibrate(gp.draft_max);
        double gain = 0.0, drafter_gain = 1.0;
        k = costs_.best_lookup_window(key, k, &gain);
        if (speculate) {
            costs_.best_window(k_cap, &drafter_gain);
            drafter_gain = std::max({1.0, drafter_gain, costs_.gated_gain()});
        }
        if (k == 0 || gain <= drafter_gain) {
            if (shadow_lookup_.tokens.empty()) shadow_lookup_ = {cand, key, hist.size(), 0};
            return -1;
        }
    } else if (k < std::max(gp.draft_min, 1)) {
        return -1;
    }
    draft_.tokens.assign(cand.begin(), cand.begin() + k);
    if (!gp.sampling.greedy()) {
        // A lookup draft is certain: q is one-hot, so speculative sampling accepts it with
        // probability p(x) and otherwise draws from p without x, which keeps the target's distribution.
        if ((int) draft_.dists.size() < k) draft_.dists.resize(k);
        for (int i = 0; i < k; ++i) {
            draft_.dists[i].ids.assign(1, draft_.tokens[i]);
            draft_.dists[i].probs.assign(1, 1.0f);
        }
    }
    return key;
}

void Engine::judge_shadow_lookup(const std::vector<llama_token> & hist, Stats & st) {
    ShadowLookup & sh = shadow_lookup_;
    if (sh.judged == 0 && sh.at < hist.size() && !sh.tokens.empty()) st.n_lookup_shadow += 1;
    while (sh.judged < sh.tokens.size() && sh.at + sh.judged < hist.size()) {
        const bool ok = hist[sh.at + sh.judged] == sh.tokens[sh.judged];
        costs_.observe_lookup(sh.key, (int) sh.judged, ok);
        sh.judged += 1;
        if (!ok) { sh = {}; return; }  // a verify judges nothing after the first rejection either
    }
    if (sh.judged == sh.tokens.size()) sh = {};
}

bool Engine::commit(llama_token t, const GenParams & gp, Result & res, std::vector<llama_token> & hist,
                    std::string & text, size_t & emitted, const TextCallback & on_text) {
    if (!gp.ignore_eos && llama_vocab_is_eog(target_.vocab(), t)) {
        res.stats.stop_reason = "eos";
        return false;
    }
    res.tokens.push_back(t);
    hist.push_back(t);
    text += token_piece(t);
    size_t hold = 0;
    for (const auto & s : gp.stop) {
        if (s.empty()) continue;
        const size_t at = text.find(s, emitted);
        if (at != std::string::npos) {
            text.resize(at);
            res.stats.stop_reason = "stop";
            return false;
        }
        hold = std::max(hold, s.size() - 1);  // a stop string may be starting at the tail
    }
    if (on_text && text.size() > emitted + hold) {
        on_text(text.substr(emitted, text.size() - hold - emitted));
        emitted = text.size() - hold;
    }
    if ((int) res.tokens.size() >= gp.n_predict) {
        res.stats.stop_reason = "length";
        return false;
    }
    return true;
}

static void validate(const GenParams & gp) {
    if (gp.n_predict < 0) throw Error("n_predict must be >= 0");
    if (gp.draft_max < 0) throw Error("draft_max must be >= 0");
    if (gp.draft_min < 0) throw Error("draft_min must be >= 0");
    if (gp.draft_min > gp.draft_max) throw Error("draft_min must be <= draft_max");
    if (!(gp.draft_p_min >= 0.0f && gp.draft_p_min <= 1.0f)) throw Error("draft_p_min must be in [0, 1]");
    if (!(gp.sampling.temp >= 0.0f) || std::isinf(gp.sampling.temp)) throw Error("temperature must be >= 0");
    if (gp.sampling.top_k < 0) throw Error("top_k must be >= 0");
    if (!(gp.sampling.top_p > 0.0f && gp.sampling.top_p <= 1.0f)) throw Error("top_p must be in (0, 1]");
}

void Engine::check_tokens(const std::vector<llama_token> & tokens, const char * what) const {
    const std::string w(what);
    if (tokens.empty()) throw Error("the " + w + " is empty (no tokens)");
    if ((int) tokens.size() > target_.n_ctx())
        throw Error("the " + w + " has " + std::to_string(tokens.size()) + " tokens but the context holds " +
                    std::to_string(target_.n_ctx()) + " (raise n_ctx)");
    for (llama_token t : tokens)
        if (t < 0 || t >= target_.n_vocab())
            throw Error(w + " token id " + std::to_string(t) + " is outside the vocabulary");
}

std::vector<float> Engine::score(const std::vector<llama_token> & tokens, int n_last) {
    check_tokens(tokens, "input");
    if (n_last < 1 || n_last > (int) tokens.size() || n_last > target_.n_batch())
        throw Error("n_last must be in [1, min(len(tokens), n_batch)], got " + std::to_string(n_last));
    cancel_flag_ = false;
    const int keep = target_.common_prefix(tokens, n_last);
    target_.truncate(keep);
    // The prefix goes in first so the scored positions always share one batch of their own.
    const int n_new = (int) tokens.size() - keep;
    target_.decode(tokens.data() + keep, n_new - n_last, 0);
    target_.decode(tokens.data() + tokens.size() - n_last, n_last, n_last);
    const int nv = target_.n_vocab();
    std::vector<float> out((size_t) n_last * nv);
    for (int i = 0; i < n_last; ++i) std::copy_n(target_.logits(i), nv, out.data() + (size_t) i * nv);
    return out;
}

std::vector<float> Engine::score_features(const std::vector<llama_token> & tokens, int n_last,
                                          const std::vector<int> & layers, std::vector<float> & features) {
    check_tokens(tokens, "input");
    if (layers.empty()) throw Error("no hidden-state layers requested");
    FeatureCapture & cap = target_.capture();
    const CaptureScope scope(cap, layers);  // validates the indices
    for (int k : layers)
        if (k == target_.n_layer() && n_last != (int) tokens.size())
            throw Error("layer " + std::to_string(k) + " (the final norm) exists only for rows with logits: "
                        "pass n_last = len(tokens) to capture it");
    target_.truncate(0);  // every position is decoded, so every position has its features
    cap.clear();
    std::vector<float> logits = score(tokens, n_last);
    const size_t T = tokens.size(), H = (size_t) target_.n_embd();
    features.assign(layers.size() * T * H, 0.0f);
    for (size_t i = 0; i < layers.size(); ++i) {
        const size_t rows = (size_t) cap.n_rows((int) i);
        if (rows != T) throw Error("captured " + std::to_string(rows) + " rows of layer " + std::to_string(layers[i]) +
                                   ", expected " + std::to_string(T));
        std::copy_n(cap.rows((int) i), T * H, features.data() + i * T * H);
    }
    return logits;
}

std::vector<llama_token> Engine::draft_window(const std::vector<llama_token> & tokens, int k,
                                              std::vector<float> & logits) {
    if (!drafter_) throw Error("no drafter loaded");
    check_tokens(tokens, "input");
    if (k < 1 || k > 64) throw Error("k must be in [1, 64]");
    FeatureCapture & cap = target_.capture();
    const bool feed = !drafter_->target_layers().empty();
    const CaptureScope scope(cap, drafter_->target_layers());
    target_.truncate(0);
    drafter_->begin(0);
    cap.clear();
    target_.decode(tokens.data(), (int) tokens.size() - 1, 0);
    if (feed) drafter_->add_features(0, (int) tokens.size() - 1, cap);
    SamplingParams greedy;
    DraftRequest req;
    req.history = &tokens;
    req.n_max = k;
    req.sampling = &greedy;
    req.logits_out = &logits;
    logits.clear();
    draft_.clear();
    drafter_->draft(req, draft_, rng_);
    return draft_.tokens;
}

Result Engine::generate(const std::vector<llama_token> & prompt, const GenParams & gp, const TextCallback & on_text) {
    validate(gp);
    check_tokens(prompt, "prompt");

    cancel_flag_ = false;
    rng_.seed(gp.sampling.seed);
    Result res;
    Stats & st = res.stats;
    std::vector<llama_token> hist(prompt);
    std::string text;
    size_t emitted = 0;
    const bool greedy = gp.sampling.greedy();
    const bool speculate = drafter_ && gp.use_drafter && gp.draft_max > 0;
    const bool lookup = gp.lookup && gp.draft_max > 0;
    if (lookup) costs_.decay_lookup(CostModel::kLookupKeep);
    shadow_lookup_ = {};
    const int nv = target_.n_vocab();

    // A feature drafter reads the target's hidden states of the committed positions it will take in:
    // captured on every decode while it drafts (or soon may), not while the auto policy decodes plainly.
    FeatureCapture & cap = target_.capture();
    const bool feed = drafter_ && !drafter_->target_layers().empty();
    const std::vector<int> no_layers;
    const CaptureScope scope(cap, feed ? drafter_->target_layers() : no_layers);
    bool capturing = feed;
    auto set_capture = [&](bool on) {
        if (!feed || on == capturing) return;
        cap.set_layers(on ? drafter_->target_layers() : no_layers);
        capturing = on;
    };

    double t_loop = now_ms();
    try {
        // Prompt: everything but the newest token goes into the target's cache now (reusing a
        // cached prefix from the last call); the newest token opens the first verify batch.
        const double t0 = now_ms();
        const int keep = target_.common_prefix(prompt, 1);
        target_.truncate(keep);
        if (drafter_) drafter_->begin(keep);
        cap.clear();
        target_.decode(prompt.data() + keep, (int) prompt.size() - 1 - keep, 0);
        if (feed) drafter_->add_features(keep, (int) prompt.size() - 1 - keep, cap);
        // The auto policy's cost calibration belongs to set-up, not to generation speed: once, and
        // again when the loop's timings drifted from it (costs_.begin_generation backs that off).
        if ((speculate || lookup) && gp.policy == DraftPolicy::Auto && costs_.begin_generation()) {
            const double tc0 = now_ms();
            calibrate(gp.draft_max);
            st.t_calibrate_ms = now_ms() - tc0;
            st.n_calibrations = 1;
        }
        last_commit_ = 1;
        st.n_prompt = (int) prompt.size();
        st.n_prompt_reused = keep;
        st.t_prompt_ms = now_ms() - t0;

        t_loop = now_ms();
        std::vector<llama_token> batch;
        bool go = gp.n_predict > 0;
        if (!go) st.stop_reason = "length";
        while (go) {
            if (cancel_flag_) { st.stop_reason = "cancelled"; break; }
            if ((int) hist.size() > target_.n_ctx()) { st.stop_reason = "context"; break; }
            const double t_step = now_ms();

            // 1. Draft: prompt lookup where the history repeats and that pays best, else the drafter.
            int k_cap = 0;
            if (speculate || lookup)
                k_cap = std::min({gp.draft_max, target_.n_ctx() - (int) hist.size(),
                                  gp.n_predict - (int) res.tokens.size() - 1});
            draft_.clear();
            if (lookup) judge_shadow_lookup(hist, st);
            const int looked_key = lookup && k_cap > 0 ? lookup_window(gp, hist, k_cap, speculate) : -1;
            const bool looked_up = looked_key >= 0;
            bool probe = false;
            int k = looked_up || !speculate ? 0
                    : choose_window(gp, k_cap, (int) hist.size(), gp.n_predict - (int) res.tokens.size(), probe);
            if (k > 0 && !drafter_->ready((int) hist.size())) k = 0;  // features missing: capture, draft next step
            if (k > 0) {
                const bool auto_rule = gp.policy == DraftPolicy::Auto && !probe;
                double expected = 0.0, p_all = 1.0;
                DraftRequest req;
                req.history = &hist;
                req.n_max = k;
                req.sampling = &gp.sampling;
                req.need_confidence = gp.policy == DraftPolicy::Auto || gp.draft_p_min > 0.0f;
                if (probe) req.max_catchup = kProbeCatchup;
                req.keep = [&](int j, float p) {
                    if (j == 0 && gp.policy == DraftPolicy::Auto) costs_.observe_first_confidence(p);
                    if (req.need_confidence && p < gp.draft_p_min) return false;
                    if (!auto_rule) return true;
                    const double a = costs_.accept_rate_conf(p);
                    if (j >= gp.draft_min && !costs_.worth_adding(j, expected, p_all, a)) return false;
                    p_all *= a;
                    expected += p_all;
                    return true;
                };
                const double td0 = now_ms();
                drafter_->draft(req, draft_, rng_);
                st.t_draft_ms += now_ms() - td0;
                st.t_draft_fwd_ms += draft_.t_forward_ms;
                st.t_catchup_ms += draft_.t_catchup_ms;
                st.n_catchup += draft_.n_catchup;
                if (draft_.n_catchup > 0) {  // feature drafter: catch-up apart from the draft steps after it
                    costs_.observe_catchup(draft_.t_catchup_ms / draft_.n_catchup);
                    if (draft_.n_forward > 1)
                        costs_.observe_draft_token((draft_.t_forward_ms - draft_.t_catchup_ms) / (draft_.n_forward - 1));
                } else if (draft_.n_forward > 0) {
                    costs_.observe_draft_token(draft_.t_forward_ms / draft_.n_forward);
                }
                if ((int) draft_.tokens.size() < std::max(gp.draft_min, 1)) draft_.tokens.clear();
            }
            const int m = (int) draft_.tokens.size();

            // 2+3. Verify the newest committed token plus the window, logits for every position, and
            // accept the longest prefix the target agrees with plus one token of the target's own.
            // Windows longer than verify_batch_max are verified in consecutive chunks (stopping at
            // the first rejection) so every batch stays within the batch-invariant sizes.
            batch.assign(1, hist.back());
            batch.insert(batch.end(), draft_.tokens.begin(), draft_.tokens.end());
            int a = 0, chunk0 = 0, chunk_n = 0;
            llama_token bonus = -1;
            double ts = 0.0;
            const int n_hist0 = (int) hist.size();
            set_capture(capture_wanted(gp, k));
            st.n_capture_steps += capturing;
            cap.clear();
            for (int i = 0; i <= m; ++i) {
                if (i == chunk0 + chunk_n) {
                    chunk0 = i;
                    chunk_n = std::min(verify_batch_max_, m + 1 - i);
                    const double tv = target_.decode(batch.data() + chunk0, chunk_n, chunk_n);
                    st.t_verify_ms += tv;
                    costs_.observe_verify(chunk_n, tv);
                }
                const double ts0 = now_ms();
                const float * lg = target_.logits(i - chunk0);
                llama_token t;
                bool ok;
                if (greedy) {
                    t = argmax(lg, nv);
                    ok = i < m && t == draft_.tokens[i];
                } else {
                    make_dist(lg, nv, gp.sampling, nullptr, p_dist_, scratch_);
                    if (i == m) {
                        t = sample(p_dist_, rng_);
                        ok = false;
                    } else {
                        // Speculative sampling: accept x ~ q with probability min(1, p(x)/q(x)),
                        // else draw from norm(max(0, p - q)); the result is distributed as p.
                        t = draft_.tokens[i];
                        float px = 0.0f;
                        for (size_t j = 0; j < p_dist_.ids.size(); ++j)
                            if (p_dist_.ids[j] == t) { px = p_dist_.probs[j]; break; }
                        const Dist & q = draft_.dists[i];
                        q_dense_.set(q);
                        ok = uniform(rng_) * q_dense_.get(t) < px;
                        if (!ok) t = sample_residual(p_dist_, q_dense_, rng_);
                        q_dense_.reset(q);
                    }
                }
                ts += now_ms() - ts0;
                if (!ok) { bonus = t; break; }
                a = i + 1;
            }
            st.t_sample_ms += ts;

            // 4. Book-keeping: statistics, acceptance model, probe back-off.
            st.n_steps += 1;
            if (m == 0) st.n_plain_steps += 1;
            if (probe) st.n_probe_steps += 1;
            st.n_drafted += m;
            st.n_accepted += a;
            if ((int) st.drafted_at.size() < m) {
                st.drafted_at.resize(m, 0);
                st.accepted_at.resize(m, 0);
            }
            for (int i = 0; i < m; ++i) {
                st.drafted_at[i] += 1;
                st.accepted_at[i] += i < a;
                if (i > a) continue;  // later ones were never judged
                if (looked_up) costs_.observe_lookup(looked_key, i, i < a);
                else costs_.observe_token(i, draft_.confidence[i], i < a);
            }
            if (looked_up) {
                st.n_lookup_steps += 1;
                st.n_lookup_drafted += m;
                st.n_lookup_accepted += a;
            }

            // 5. Commit accepted tokens and the bonus; drop rejected positions from the target cache.
            for (int i = 0; i < a && go; ++i) go = commit(draft_.tokens[i], gp, res, hist, text, emitted, on_text);
            if (go) go = commit(bonus, gp, res, hist, text, emitted, on_text);
            target_.truncate((int) hist.size() - 1);
            last_commit_ = (int) hist.size() - n_hist0;
            // The verify batch's first rows are the positions just committed (newest token excluded).
            if (feed && capturing) drafter_->add_features(n_hist0 - 1, (int) hist.size() - n_hist0, cap);

            if (probe) {
                const double rate = (a + 1) / (now_ms() - t_step);
                probe_interval_ = rate > 1.0 / costs_.verify_ms(1) ? 8 : std::min(probe_interval_ * 2, 512);
            }
        }
    } catch (const Error & e) {
        if (std::string(e.what()) != "cancelled") throw;
        st.stop_reason = "cancelled";
        target_.truncate((int) hist.size() - 1);
    }
    st.t_total_ms = now_ms() - t_loop;
    st.n_generated = (int) res.tokens.size();
    // Without a verified draft every decode was a plain step: the output is plain decoding's.
    st.exact = exactness_.exact || st.n_drafted == 0;
    st.exact_reason = exactness_.exact || st.n_drafted > 0
                          ? exactness_.reason
                          : "no draft was verified, every step was a plain step (with drafts: " + exactness_.reason + ")";
    if (on_text && text.size() > emitted) on_text(text.substr(emitted));
    res.text = std::move(text);
    return res;
}

}  // namespace ppow
