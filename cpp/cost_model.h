// cost_model.h - the numbers behind --draft-policy auto.
//
// A verify step that drafts k tokens costs  C(k) = Tv(k+1) + k*Td  (target forward over k+1
// positions, k drafter forward passes) and yields 1 + E[accepted] tokens. A feature drafter also
// takes every committed position in (its catch-up batch, whose last row is the first draft step):
// C(k) = Tv(k+1) + (k-1)*Td + (1 + E[accepted])*Tc, Tc its cost per committed position. Plain decoding yields
// 1 token per Tv(1). Tv is measured on this machine per batch size (calibrated once, then a moving
// average of every verify); Td likewise. Acceptance is learned online, per drafter-confidence bucket
// (for the token-by-token stop rule) and per window position (for the draft-or-not decision).
// Each step drafts only while one more token raises expected tokens per millisecond, and drafts
// nothing when no window beats plain decoding; rare back-off probes keep the estimates fresh.
#pragma once

#include "lookup.h"

#include <string>
#include <vector>

namespace ppow {

class CostModel {
public:
    static constexpr int kBuckets = 20;
    static constexpr double kMinFirstSeen = 16;  // first-token confidences before gated_gain() speaks

    void reset_acceptance();
    bool has_verify_costs() const { return !tv_.empty(); }
    void set_chunk(int n) { chunk_ = n; }

    // Measured forward costs.
    void set_verify_cost(int n, double ms);      // calibration (overwrites)
    void observe_verify(int n, double ms);       // moving average
    void observe_draft_token(double ms);
    void observe_catchup(double ms_per_position);
    double verify_ms(int n) const;               // n >= 1; linear inter/extrapolation
    double draft_ms() const { return td_; }
    double catchup_ms() const { return tc_; }
    // C(k) for a window of k tokens of which `expected` are expected to be accepted.
    double step_ms(int k, double expected) const;
    int max_measured() const { return (int) tv_.size() - 1; }

    // Acceptance statistics.
    void observe_token(int pos, float confidence, bool accepted);
    double accept_rate_conf(float confidence) const;
    double accept_rate_pos(int pos) const;

    // Best window length by expected tokens/ms using per-position rates; 0 = plain decoding.
    int best_window(int k_cap, double * gain_vs_plain = nullptr) const;
    // The drafter's confidence in the first token of each window it drafted (kept or not).
    void observe_first_confidence(float confidence);
    // Tokens/ms (relative to plain) of running the drafter every step and keeping a one-token window
    // only where its first token's confidence says it pays (the stop rule's decision), over the
    // first-token confidences seen so far; 0 until enough were seen. Longer windows only add to it.
    double gated_gain() const;
    // Cheapest possible verify: with every draft accepted, could any window beat plain?
    bool speculation_can_pay(int k_cap) const;
    // Window rule: given the expected accepted count so far and the probability that all drafted
    // so far are accepted, does adding token j (acceptance `a`) raise expected tokens per ms?
    bool worth_adding(int j, double expected_so_far, double p_all_so_far, double a) const;

    // Prompt-lookup windows (lookup.h): acceptance per matched n-gram length and window position,
    // apart from the drafter's. It depends on how much the text repeats itself as much as on the
    // target, so each generation starts with the earlier evidence halved (decay_lookup(0.5)).
    void decay_lookup(double keep);
    void observe_lookup(int ngram, int pos, bool accepted);
    // Best window of at most n_avail tokens for a match of this n-gram length by expected tokens/ms
    // (no drafter cost); 0 = none beats plain decoding. *gain: its tokens/ms relative to plain.
    int best_lookup_window(int ngram, int n_avail, double * gain) const;

    std::string to_json() const;  // {"target_ms": {"1": ..}, "draft_ms": ..} for the trainer

private:
    std::vector<double> tv_;   // tv_[n] = ms for a target forward over n positions (index 0 unused)
    std::vector<int> tv_known_;
    int chunk_ = 1 << 20;      // largest single verify batch
    double td_ = 0.0;
    bool td_known_ = false;
    double tc_ = 0.0;          // feature drafters: ms per committed position taken in
    bool tc_known_ = false;
    double conf_acc_[kBuckets] = {}, conf_n_[kBuckets] = {};
    double first_n_[kBuckets] = {}, first_total_ = 0.0;
    std::vector<double> pos_acc_, pos_n_;
    std::vector<double> lookup_acc_[kLookupMaxNgram], lookup_n_[kLookupMaxNgram];  // [ngram - 1][position]
};

}  // namespace ppow
