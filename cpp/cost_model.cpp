#include "cost_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace ppow {

static constexpr double kEma = 0.1;  // weight of a new timing in the moving averages

void CostModel::reset_acceptance() {
    std::fill(conf_acc_, conf_acc_ + kBuckets, 0.0);
    std::fill(conf_n_, conf_n_ + kBuckets, 0.0);
    std::fill(first_n_, first_n_ + kBuckets, 0.0);
    first_total_ = 0.0;
    pos_acc_.clear();
    pos_n_.clear();
    decay_lookup(0.0);
}

void CostModel::set_verify_cost(int n, double ms) {
    if ((int) tv_.size() <= n) {
        tv_.resize(n + 1, 0.0);
        tv_known_.resize(n + 1, 0);
    }
    tv_[n] = ms;
    tv_known_[n] = 1;
}

void CostModel::observe_verify(int n, double ms) {
    if (n < (int) tv_.size() && tv_known_[n]) tv_[n] += kEma * (ms - tv_[n]);
    else set_verify_cost(n, ms);
}

void CostModel::observe_draft_token(double ms) {
    td_ = td_known_ ? td_ + kEma * (ms - td_) : ms;
    td_known_ = true;
}

void CostModel::observe_catchup(double ms) {
    tc_ = tc_known_ ? tc_ + kEma * (ms - tc_) : ms;
    tc_known_ = true;
}

double CostModel::step_ms(int k, double expected) const {
    if (!tc_known_) return verify_ms(k + 1) + k * td_;
    return verify_ms(k + 1) + std::max(0, k - 1) * td_ + (1.0 + expected) * tc_;
}

double CostModel::verify_ms(int n) const {
    // Windows longer than the verify chunk are verified chunk by chunk (an upper bound: later
    // chunks are skipped after a rejection).
    if (n > chunk_) return verify_ms(chunk_) + verify_ms(n - chunk_);
    // Nearest measured sizes below and above n; extrapolate from the last two past the end.
    int lo = -1, hi = -1;
    for (int i = 1; i < (int) tv_.size(); ++i) {
        if (!tv_known_[i]) continue;
        if (i <= n) lo = i;
        if (i >= n && hi < 0) hi = i;
    }
    if (lo < 0 && hi < 0) return 0.0;
    if (lo == n) return tv_[n];
    if (lo < 0) return tv_[hi] * n / hi;
    if (hi < 0) {
        int prev = -1;
        for (int i = lo - 1; i >= 1; --i)
            if (tv_known_[i]) { prev = i; break; }
        const double slope = prev < 0 ? tv_[lo] / lo : (tv_[lo] - tv_[prev]) / (lo - prev);
        return tv_[lo] + std::max(0.0, slope) * (n - lo);
    }
    return tv_[lo] + (tv_[hi] - tv_[lo]) * (n - lo) / (hi - lo);
}

static int bucket(float c) {
    return std::min(CostModel::kBuckets - 1, std::max(0, (int) (c * CostModel::kBuckets)));
}

void CostModel::observe_token(int pos, float confidence, bool accepted) {
    if (confidence >= 0.0f) {  // < 0: the drafter did not compute it
        const int b = bucket(confidence);
        conf_n_[b] += 1;
        conf_acc_[b] += accepted;
    }
    if ((int) pos_n_.size() <= pos) {
        pos_n_.resize(pos + 1, 0.0);
        pos_acc_.resize(pos + 1, 0.0);
    }
    pos_n_[pos] += 1;
    pos_acc_[pos] += accepted;
}

double CostModel::accept_rate_conf(float c) const {
    // Prior: the drafter's own probability, worth two observations.
    const int b = bucket(c);
    const double mid = (b + 0.5) / kBuckets;
    return (conf_acc_[b] + 2.0 * mid) / (conf_n_[b] + 2.0);
}

double CostModel::accept_rate_pos(int pos) const {
    // Conditional rate at this position given all before it were accepted; Beta(1,1) prior.
    // Positions never reached borrow the last measured one.
    if (pos_n_.empty()) return 0.5;
    const int p = std::min(pos, (int) pos_n_.size() - 1);
    return (pos_acc_[p] + 1.0) / (pos_n_[p] + 2.0);
}

// The window length (0: plain) with the best expected tokens/ms, from the conditional acceptance
// rate(pos) and the cost cost(k, expected accepted) of a window of k; *gain relative to plain.
template <typename Rate, typename Cost>
static int best_by_rate(int k_cap, double plain_ms, Rate rate, Cost cost, double * gain) {
    const double plain = 1.0 / std::max(1e-6, plain_ms);
    double best = plain, expected = 0.0, p_all = 1.0;
    int best_k = 0;
    for (int k = 1; k <= k_cap; ++k) {
        p_all *= rate(k - 1);
        expected += p_all;
        const double r = (1.0 + expected) / std::max(1e-6, cost(k, expected));
        if (r > best) { best = r; best_k = k; }
    }
    if (gain) *gain = best / plain;
    return best_k;
}

int CostModel::best_window(int k_cap, double * gain) const {
    return best_by_rate(k_cap, verify_ms(1), [&](int pos) { return accept_rate_pos(pos); },
                        [&](int k, double expected) { return step_ms(k, expected); }, gain);
}

void CostModel::observe_first_confidence(float c) {
    if (c < 0.0f) return;
    first_n_[bucket(c)] += 1;
    first_total_ += 1;
}

double CostModel::gated_gain() const {
    if (first_total_ < kMinFirstSeen) return 0.0;
    double tokens = 0.0, ms = 0.0;
    for (int b = 0; b < kBuckets; ++b) {
        if (first_n_[b] == 0) continue;
        const double w = first_n_[b] / first_total_;
        const double a = accept_rate_conf((b + 0.5f) / kBuckets);
        if (worth_adding(0, 0.0, 1.0, a)) {
            tokens += w * (1.0 + a);
            ms += w * step_ms(1, a);
        } else {  // the drafter ran, its window was dropped: a plain step plus one drafter pass
            tokens += w;
            ms += w * (verify_ms(1) + (tc_known_ ? tc_ : td_));
        }
    }
    return tokens / std::max(1e-6, ms) * verify_ms(1);
}

bool CostModel::speculation_can_pay(int k_cap) const {
    const double plain = 1.0 / std::max(1e-6, verify_ms(1));
    for (int k = 1; k <= k_cap; ++k)
        if ((1.0 + k) / step_ms(k, k) > plain) return true;
    return false;
}

bool CostModel::worth_adding(int j, double expected, double p_all, double a) const {
    // j tokens kept so far; compare windows of j and j+1 tokens.
    const double now = (1.0 + expected) / step_ms(j, expected);
    const double next = (1.0 + expected + p_all * a) / step_ms(j + 1, expected + p_all * a);
    return next > now;
}

void CostModel::decay_lookup(double keep) {
    for (int g = 0; g < kLookupMaxNgram; ++g)
        for (size_t i = 0; i < lookup_n_[g].size(); ++i) {
            lookup_n_[g][i] *= keep;
            lookup_acc_[g][i] *= keep;
        }
}

void CostModel::observe_lookup(int ngram, int pos, bool accepted) {
    auto & n = lookup_n_[ngram - 1];
    auto & acc = lookup_acc_[ngram - 1];
    if ((int) n.size() <= pos) {
        n.resize(pos + 1, 0.0);
        acc.resize(pos + 1, 0.0);
    }
    n[pos] += 1;
    acc[pos] += accepted;
}

int CostModel::best_lookup_window(int ngram, int n_avail, double * gain) const {
    // Conditional acceptance per position, unreached positions borrowing the last. The prior is
    // optimistic (two pseudo-acceptances): a kind of match is tried until evidence says it does not
    // pay, where a neutral prior would never try it on a target whose 2-row verify costs 1.5x a
    // plain step (Gemma 3 270M on 2 CPU cores at shallow depth).
    const auto & n = lookup_n_[ngram - 1];
    const auto & acc = lookup_acc_[ngram - 1];
    auto rate = [&](int pos) {
        if (n.empty()) return 1.0;
        const int p = std::min(pos, (int) n.size() - 1);
        return (acc[p] + 2.0) / (n[p] + 2.0);
    };
    return best_by_rate(n_avail, verify_ms(1), rate, [&](int k, double) { return verify_ms(k + 1); }, gain);
}

std::string CostModel::to_json() const {
    std::string s = "{\"target_ms\": {";
    bool first = true;
    for (int n = 1; n < (int) tv_.size(); ++n) {
        if (!tv_known_[n]) continue;
        char buf[64];
        std::snprintf(buf, sizeof buf, "%s\"%d\": %.4f", first ? "" : ", ", n, tv_[n]);
        s += buf;
        first = false;
    }
    char buf[64];
    std::snprintf(buf, sizeof buf, "}, \"draft_ms\": %.4f", td_);
    s += buf;
    if (tc_known_) {
        std::snprintf(buf, sizeof buf, ", \"catchup_ms\": %.4f", tc_);
        s += buf;
    }
    return s + "}";
}

}  // namespace ppow
