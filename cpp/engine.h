// engine.h - draft-then-verify generation over llama.cpp (a tidy speculative-simple).
#pragma once

#include "cost_model.h"
#include "drafter.h"
#include "model.h"
#include "sampling.h"

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ppow {

enum class DraftPolicy { Fixed, Auto };

struct GenParams {
    int n_predict = 128;
    SamplingParams sampling;
    int draft_max = 8;        // window cap k
    int draft_min = 0;        // windows shorter than this are not verified (plain step instead)
    float draft_p_min = 0.0f; // stop the window at a token the drafter gives less than this
    DraftPolicy policy = DraftPolicy::Fixed;
    bool use_drafter = true;  // false: plain decoding even when a drafter is loaded
    bool lookup = false;      // also draft from the history where it repeats (lookup.h)
    bool ignore_eos = false;
    std::vector<std::string> stop;
};

struct Stats {
    int n_prompt = 0, n_prompt_reused = 0;
    double t_prompt_ms = 0.0;     // prompt processing (and the auto policy's first calibration)
    int n_generated = 0, n_steps = 0, n_drafted = 0, n_accepted = 0;
    int n_plain_steps = 0, n_probe_steps = 0;
    int n_lookup_steps = 0, n_lookup_drafted = 0, n_lookup_accepted = 0;  // windows from prompt lookup
    int n_lookup_shadow = 0;  // declined lookup drafts judged against the committed tokens (free evidence)
    std::vector<int> drafted_at, accepted_at;  // per window position
    double t_draft_ms = 0.0;      // drafter, forward passes and its host work
    double t_draft_fwd_ms = 0.0;  // drafter forward passes only
    double t_catchup_ms = 0.0;    // part of them: feature drafters taking in committed positions
    int n_catchup = 0;
    double t_verify_ms = 0.0;     // target forward passes
    double t_sample_ms = 0.0;     // argmax / sampling / acceptance on the target's logits
    double t_calibrate_ms = 0.0;  // part of t_prompt_ms: the auto policy's cost calibration (set-up)
    int n_calibrations = 0;
    int n_capture_steps = 0;      // steps whose verify batch captured target features (feature drafters)
    double t_total_ms = 0.0;      // generation loop, prompt excluded
    std::string stop_reason;      // eos | length | stop | context | cancelled
    // Whether this output is token-identical to plain greedy decoding of the same target here (the
    // greedy promise; sampled output keeps the target's distribution on the same condition), and why.
    bool exact = true;
    std::string exact_reason;
};

// Whether verify batches reproduce plain steps' logits bit for bit on this backend and build, by
// the rules ppow knows (derived on llama.cpp's CPU backend), and why (or why not).
struct Exactness {
    bool exact = false;
    std::string reason;
};

struct Result {
    std::vector<llama_token> tokens;
    std::string text;
    Stats stats;
};

using TextCallback = std::function<void(const std::string &)>;

class Engine {
public:
    Engine(const ModelParams & target, const std::optional<ModelParams> & drafter);

    Result generate(const std::vector<llama_token> & prompt, const GenParams & params, const TextCallback & on_text);
    void cancel() { cancel_flag_ = true; }

    // Target logits for the last n_last of `tokens` (row-major n_last x n_vocab), decoded as ONE
    // batch after the longest cached prefix: tokens in, logits out, for the trainer, the benchmark
    // and the batch-invariance tests.
    std::vector<float> score(const std::vector<llama_token> & tokens, int n_last);

    // score() from an empty cache, capturing the target's hidden states at `layers` (Hugging Face
    // numbering, see capture.h) for every position of `tokens`. `features` gets
    // layers.size() x tokens.size() x n_embd floats; the final-norm layer (k = n_layer) exists only
    // for the n_last scored rows, so asking for it needs n_last == tokens.size().
    std::vector<float> score_features(const std::vector<llama_token> & tokens, int n_last,
                                      const std::vector<int> & layers, std::vector<float> & features);

    // The drafter's greedy window of k tokens after `tokens` (the target decodes all but the last,
    // from an empty cache, as a prompt), and each step's draft-vocabulary logits (k rows): for
    // checking a drafter against its training code.
    std::vector<llama_token> draft_window(const std::vector<llama_token> & tokens, int k, std::vector<float> & logits);

    std::vector<llama_token> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    std::string detokenize(const std::vector<llama_token> & tokens) const;
    std::string token_piece(llama_token t) const;

    // Measure target verify cost per batch size (and drafter cost per token) on this machine.
    void calibrate(int k_max);
    CostModel & costs() { return costs_; }
    void set_verify_batch_max(int n);
    int verify_batch_max() const { return verify_batch_max_; }
    // Exactness of speculative output on this backend with the current settings.
    const Exactness & exactness() const { return exactness_; }

    bool has_drafter() const { return drafter_ != nullptr; }
    const Drafter * drafter() const { return drafter_.get(); }
    LlamaModel * drafter_model() { return drafter_ ? &drafter_->model() : nullptr; }
    LlamaModel & target() { return target_; }
    int n_vocab() const { return target_.n_vocab(); }
    int n_ctx() const { return target_.n_ctx(); }
    int n_layer() const { return target_.n_layer(); }
    int n_embd() const { return target_.n_embd(); }
    llama_token bos() const { return llama_vocab_bos(target_.vocab()); }
    bool add_bos() const { return llama_vocab_get_add_bos(target_.vocab()); }

private:
    // Non-empty, fits the context, every id in the target's vocabulary; `what` names it in errors.
    void check_tokens(const std::vector<llama_token> & tokens, const char * what) const;
    // Commits tokens one by one; returns false once generation must stop.
    bool commit(llama_token t, const GenParams & gp, Result & res, std::vector<llama_token> & hist,
                std::string & pending, size_t & emitted, const TextCallback & on_text);
    // Window length for the drafter this step (0: plain); `probe`: a back-off probe window.
    // `remaining`: tokens this generation may still produce.
    int choose_window(const GenParams & gp, int k_cap, int n_hist, int remaining, bool & probe);
    // Whether the target's features should be captured in this step's verify batch: only while the
    // drafter is likely to draft at the next step (an idle feature drafter then costs nothing).
    bool capture_wanted(const GenParams & gp, int drafted) const;
    // Prompt lookup's window into draft_.tokens when it is the step's best draft: returns the match's
    // key (lookup_key: its acceptance is kept per key), -1 when lookup does not draft.
    int lookup_window(const GenParams & gp, const std::vector<llama_token> & hist, int k_cap, bool speculate);
    // Judges the pending declined lookup draft (shadow_lookup_) against the tokens committed since.
    void judge_shadow_lookup(const std::vector<llama_token> & hist, Stats & st);

    LlamaModel target_;
    std::unique_ptr<Drafter> drafter_;
    CostModel costs_;
    volatile bool cancel_flag_ = false;
    Rng rng_;
    DenseProbs q_dense_;
    Dist p_dist_;
    std::vector<int32_t> scratch_;
    DraftResult draft_;
    int plain_since_probe_ = 0, probe_interval_ = 8;
    bool plain_by_policy_ = false;  // the last choose_window() chose plain decoding on the costs
    bool probe_soon_ = false;       // ... and a probe is due within kCaptureAhead steps
    int last_commit_ = 1;           // tokens committed by the last step (the drafter's steady catch-up)
    // A lookup draft the auto policy declined, judged against what the target then committed: its
    // acceptance evidence costs nothing (greedy: a plain step commits the target's argmax, exactly
    // what a verify compares; sampled: the committed token equals the draft with probability p(x),
    // a lookup draft's acceptance probability). One pending at a time.
    struct ShadowLookup {
        std::vector<llama_token> tokens;
        int key = 0;                // lookup_key of the match
        size_t at = 0, judged = 0;  // history index of tokens[0]; positions judged so far
    } shadow_lookup_;
    // A probe window's feature drafter takes in only this many recent positions: its cost stays
    // bounded however long the plain run before it was (the useless-drafter case).
    static constexpr int kProbeCatchup = 16;
    // Steps before a due probe from which features are captured again (the probe's context).
    static constexpr int kCaptureAhead = 16;
    // Largest verify batch whose logits match single-token decoding bit for bit on llama.cpp's CPU
    // backend (measured: batches of >= 8 take other matmul kernels and drift in the last bits,
    // which flips near-tied argmaxes). Larger windows are verified in chunks of this size.
    // PPOW_VERIFY_BATCH_MAX overrides it (default: 7, or the target's pad_rows when that is set).
    static constexpr int kCpuInvariantRows = 7;
    int verify_batch_max_ = kCpuInvariantRows;
    Exactness exactness_;
    Exactness judge_exactness() const;
};

}  // namespace ppow
