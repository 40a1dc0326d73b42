// cost_model.h - the numbers behind --draft-policy auto.
//
// A verify step that drafts k tokens costs  C(k) = Tv(k+1) + k*Td  (target forward over k+1
// positions, k drafter forward passes) and yields 1 + E[accepted] tokens. A feature drafter also
// takes every committed position in (its catch-up batch, whose last row is the first draft step):
// C(k) = Tv(k+1) + (k-1)*Td + (1 + E[accepted])*Tc, Tc its cost per committed position. Plain decoding yields
// 1 token per Tv(1). Tv is measured on this machine per batch size: calibrated (untimed warm-up runs
// per batch shape, then the median of several), then the median of the latest in-loop timings once
// there are a few, so one cold or disturbed timing moves nothing; when in-loop timings drift from
// the calibration the model asks to be calibrated again (at the next generation's set-up, backing
// off while the drift persists). Td and Tc likewise. A drafter left idle while decoding went plain
// takes the positions it missed in at its next window (bounded): that catch-up is charged to the
// window that pays it. Acceptance is learned online, per drafter-confidence bucket
// (for the token-by-token stop rule) and per window position (for the draft-or-not decision).
// Each step drafts only while one more token raises expected tokens per millisecond, and drafts
// nothing when no window beats plain decoding; rare back-off probes keep the estimates fresh.
#pragma once

#include "lookup.h"

#include <functional>
#include <string>
#include <vector>

namespace ppow {

// The median of the latest timings (a ring of `cap`).
class RecentMedian {
public:
    explicit RecentMedian(int cap = 9) : cap_(cap) {}
    void push(double v);
    void clear() { v_.clear(), next_ = 0; }
    int size() const { return (int) v_.size(); }
    bool full() const { return (int) v_.size() == cap_; }
    double median() const;  // 0 when empty
private:
    std::vector<double> v_;
    int next_ = 0, cap_;
};

// One measured cost: a calibrated value and the latest in-loop timings, absolute and relative to the
// plain step's cost at the time (`rel`). Every cost but the plain step's is then estimated as the
// plain step's current cost times its ratio: costs observed often (a plain step) and rarely (a
// 3-row verify while auto decodes plainly) follow the machine's load together, so a busier machine
// cannot make rarely seen sizes look cheap.
struct MeasuredCost {
    static constexpr int kTrustRecent = 3;   // in-loop timings before they replace the calibration
    static constexpr double kDrift = 1.3;    // in-loop median this far (either way) from the calibration: stale
    double cal = 0.0;
    bool cal_known = false;
    RecentMedian recent, rel;
    bool known() const { return cal_known || recent.size() > 0; }
    double value() const;                    // absolute: in-loop median once trusted, else the calibration
    void calibrate(double ms) { cal = ms, cal_known = true, recent.clear(), rel.clear(); }
};

class CostModel {
public:
    static constexpr int kBuckets = 20;
    static constexpr double kMinFirstSeen = 16;  // first-token confidences before gated_gain() speaks
    static constexpr int kWarmup = 2, kReps = 5; // calibration: untimed runs per batch shape, then timed ones
    static constexpr int kMaxRecalibrationGap = 64;

    void reset_acceptance();
    bool has_verify_costs() const;
    void set_chunk(int n) { chunk_ = n; }

    // Calibration. `measure(n)` times one target forward over n rows (<= 0: cannot, skip that size);
    // each size gets kWarmup untimed runs (a new batch shape builds graphs, faults weights in) and
    // the median of kReps timed ones, the sizes taken in turn within each round. The drafter's step
    // and per-position catch-up likewise (null: none). Replaces what in-loop timings had taught.
    void calibrate(const std::vector<int> & sizes, const std::function<double(int)> & measure,
                   const std::function<double()> & draft_step = nullptr,
                   const std::function<double()> & catchup = nullptr);
    bool calibrated() const { return calibrated_; }
    // In-loop timings have drifted from the calibration (or none was made yet).
    bool drifted() const;
    // Called once per generation that uses the costs; true when it should calibrate first: never
    // calibrated, or drifted and not calibrated for the last gap generations (the gap doubles with
    // every recalibration, up to kMaxRecalibrationGap, so a lasting drift costs little).
    bool begin_generation();
    int n_calibrations() const { return n_calibrations_; }

    // Measured forward costs.
    void set_verify_cost(int n, double ms);      // a calibrated value
    void observe_verify(int n, double ms);       // an in-loop timing
    void observe_draft_token(double ms);
    void observe_catchup(double ms_per_position);
    double verify_ms(int n) const;               // n >= 1; linear inter/extrapolation
    double draft_ms() const { return scaled(td_); }
    double catchup_ms() const { return scaled(tc_); }
    // C(k) for a window of k tokens of which `expected` are expected to be accepted.
    double step_ms(int k, double expected) const;
    int max_measured() const { return (int) tv_.size() - 1; }

    // Acceptance statistics.
    void observe_token(int pos, float confidence, bool accepted);
    double accept_rate_conf(float confidence) const;
    double accept_rate_pos(int pos) const;

    // Best window length by expected tokens/ms using per-position rates; 0 = plain decoding.
    int best_window(int k_cap, double * gain_vs_plain = nullptr) const;
    // The one-off catch-up of `positions` committed positions a drafter has not taken in beyond the
    // last step's (feature drafters: Tc each; token drafters batch them, about Tc each too).
    double catchup_extra_ms(int positions) const;
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

    // Prompt-lookup windows (lookup.h): acceptance per match key (lookup_key: how far back the match
    // agrees) and window position, apart from the drafter's. It depends on the text as much as on the
    // target, so each generation starts with the earlier evidence scaled by kLookupKeep.
    static constexpr double kLookupKeep = 0.8;
    void decay_lookup(double keep);
    void observe_lookup(int key, int pos, bool accepted);
    // Best window of at most n_avail tokens for a match of this key by expected tokens/ms (no drafter
    // cost); 0 = none beats plain decoding. *gain: its tokens/ms relative to plain.
    int best_lookup_window(int key, int n_avail, double * gain) const;

    std::string to_json() const;  // {"target_ms": {"1": ..}, "draft_ms": ..} for the trainer

private:
    bool tv_known(int n) const { return n < (int) tv_.size() && tv_[n].known(); }
    double plain_ms() const { return tv_known(1) ? tv_[1].value() : 0.0; }  // T(1) now
    // A cost as the plain step's current cost times its ratio (in-loop ratios once trusted, else the
    // calibrated ratio); absolute where no ratio is known.
    double scaled(const MeasuredCost & c) const;
    bool cost_drifted(const MeasuredCost & c) const;
    void observe(MeasuredCost & c, double ms);

    std::vector<MeasuredCost> tv_ = std::vector<MeasuredCost>(2);  // tv_[n]: a forward over n positions (0 unused)
    int chunk_ = 1 << 20;      // largest single verify batch
    MeasuredCost td_;          // one single-token draft step
    MeasuredCost tc_;          // ms per committed position a drafter takes in (its catch-up)
    bool calibrated_ = false;
    int n_calibrations_ = 0, since_calibration_ = 0, recalibration_gap_ = 1;
    double conf_acc_[kBuckets] = {}, conf_n_[kBuckets] = {};
    double first_n_[kBuckets] = {}, first_total_ = 0.0;
    std::vector<double> pos_acc_, pos_n_;
    std::vector<double> lookup_acc_[kLookupKeys], lookup_n_[kLookupKeys];  // [lookup_key][position]
};

}  // namespace ppow
