#include "cost_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>

namespace ppow {

void RecentMedian::push(double v) {
    if ((int) v_.size() < cap_) v_.push_back(v);
    else v_[next_] = v;
    next_ = (next_ + 1) % cap_;
}

double RecentMedian::median() const {
    if (v_.empty()) return 0.0;
    std::vector<double> s(v_);
    std::sort(s.begin(), s.end());
    const size_t h = s.size() / 2;
    return s.size() % 2 ? s[h] : 0.5 * (s[h - 1] + s[h]);
}

double MeasuredCost::value() const {
    if (recent.size() >= kTrustRecent || (!cal_known && recent.size() > 0)) return recent.median();
    return cal;
}

double CostModel::scaled(const MeasuredCost & c) const {
    if (&c == &tv_[1]) return c.value();
    const double t1 = plain_ms();
    if (t1 > 0.0 && c.rel.size() >= MeasuredCost::kTrustRecent) return t1 * c.rel.median();
    if (t1 > 0.0 && c.cal_known && tv_[1].cal_known && tv_[1].cal > 0.0) return t1 * c.cal / tv_[1].cal;
    return c.value();
}

bool CostModel::cost_drifted(const MeasuredCost & c) const {
    if (!c.cal_known || c.cal <= 0.0) return false;
    double r;
    if (&c == &tv_[1]) {
        if (!c.recent.full()) return false;
        r = c.recent.median() / c.cal;
    } else {  // its ratio to the plain step
        if (!c.rel.full() || !tv_[1].cal_known || tv_[1].cal <= 0.0) return false;
        r = c.rel.median() / (c.cal / tv_[1].cal);
    }
    return r > MeasuredCost::kDrift || r < 1.0 / MeasuredCost::kDrift;
}

void CostModel::observe(MeasuredCost & c, double ms) {
    c.recent.push(ms);
    const double t1 = plain_ms();
    if (&c != &tv_[1] && t1 > 0.0) c.rel.push(ms / t1);
}

static double median(std::vector<double> t) {
    if (t.empty()) return 0.0;
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

void CostModel::calibrate(const std::vector<int> & sizes, const std::function<double(int)> & measure,
                          const std::function<double()> & draft_step, const std::function<double()> & catchup) {
    // Every run of a round times each shape once (and the drafter's step and catch-up): a load
    // change on a shared machine then shifts all of them alike, and the ratios between them, which
    // the model keeps, hold.
    std::vector<std::function<double()>> runs;
    std::vector<int> which;  // size n, or -1 the draft step, -2 the catch-up
    for (int n : sizes)
        if (measure(n) > 0.0) {  // the first warm-up run also says whether n fits
            runs.push_back([&measure, n] { return measure(n); });
            which.push_back(n);
        }
    if (draft_step) runs.push_back(draft_step), which.push_back(-1);
    if (catchup) runs.push_back(catchup), which.push_back(-2);
    for (int w = 0; w < kWarmup; ++w)
        for (size_t i = 0; i < runs.size(); ++i)
            if (w > 0 || which[i] < 0) runs[i]();
    std::vector<std::vector<double>> t(runs.size());
    for (int r = 0; r < kReps; ++r)
        for (size_t i = 0; i < runs.size(); ++i) {
            const double ms = runs[i]();
            if (ms > 0.0) t[i].push_back(ms);
        }
    for (size_t i = 0; i < runs.size(); ++i) {
        const double ms = median(t[i]);
        if (ms <= 0.0) continue;
        if (which[i] > 0) set_verify_cost(which[i], ms);
        else (which[i] == -1 ? td_ : tc_).calibrate(ms);
    }
    if (calibrated_) recalibration_gap_ = std::min(2 * recalibration_gap_, kMaxRecalibrationGap);
    calibrated_ = true;
    since_calibration_ = 0;
    n_calibrations_ += 1;
}

bool CostModel::has_verify_costs() const {
    for (const auto & c : tv_)
        if (c.known()) return true;
    return false;
}

bool CostModel::drifted() const {
    for (const auto & c : tv_)
        if (cost_drifted(c)) return true;
    return cost_drifted(td_) || cost_drifted(tc_);
}

bool CostModel::begin_generation() {
    since_calibration_ += 1;
    return !calibrated_ || (drifted() && since_calibration_ >= recalibration_gap_);
}

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
    if ((int) tv_.size() <= std::max(n, 1)) tv_.resize(std::max(n, 1) + 1);
    tv_[n].calibrate(ms);
}

void CostModel::observe_verify(int n, double ms) {
    if ((int) tv_.size() <= std::max(n, 1)) tv_.resize(std::max(n, 1) + 1);
    observe(tv_[n], ms);
}

void CostModel::observe_draft_token(double ms) { observe(td_, ms); }

void CostModel::observe_catchup(double ms) { observe(tc_, ms); }

double CostModel::step_ms(int k, double expected) const {
    if (!tc_.known()) return verify_ms(k + 1) + k * draft_ms();
    return verify_ms(k + 1) + std::max(0, k - 1) * draft_ms() + (1.0 + expected) * catchup_ms();
}

double CostModel::catchup_extra_ms(int positions) const {
    if (positions <= 0) return 0.0;
    return positions * (tc_.known() ? catchup_ms() : draft_ms());
}

double CostModel::verify_ms(int n) const {
    // Windows longer than the verify chunk are verified chunk by chunk (an upper bound: later
    // chunks are skipped after a rejection).
    if (n > chunk_) return verify_ms(chunk_) + verify_ms(n - chunk_);
    // Nearest measured sizes below and above n; extrapolate from the last two past the end.
    int lo = -1, hi = -1;
    for (int i = 1; i < (int) tv_.size(); ++i) {
        if (!tv_known(i)) continue;
        if (i <= n) lo = i;
        if (i >= n && hi < 0) hi = i;
    }
    if (lo < 0 && hi < 0) return 0.0;
    auto t = [&](int i) { return scaled(tv_[i]); };
    if (lo == n) return t(n);
    if (lo < 0) return t(hi) * n / hi;
    if (hi < 0) {
        int prev = -1;
        for (int i = lo - 1; i >= 1; --i)
            if (tv_known(i)) { prev = i; break; }
        const double slope = prev < 0 ? t(lo) / lo : (t(lo) - t(prev)) / (lo - prev);
        return t(lo) + std::max(0.0, slope) * (n - lo);
    }
    return t(lo) + (t(hi) - t(lo)) * (n - lo) / (hi - lo);
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
            ms += w * (verify_ms(1) + (tc_.known() ? catchup_ms() : draft_ms()));
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
    for (int g = 0; g < kLookupKeys; ++g)
        for (size_t i = 0; i < lookup_n_[g].size(); ++i) {
            lookup_n_[g][i] *= keep;
            lookup_acc_[g][i] *= keep;
        }
}

void CostModel::observe_lookup(int key, int pos, bool accepted) {
    if (key < 0 || key >= kLookupKeys || pos < 0) return;
    auto & n = lookup_n_[key];
    auto & acc = lookup_acc_[key];
    if ((int) n.size() <= pos) {
        n.resize(pos + 1, 0.0);
        acc.resize(pos + 1, 0.0);
    }
    n[pos] += 1;
    acc[pos] += accepted;
}

int CostModel::best_lookup_window(int key, int n_avail, double * gain) const {
    // Conditional acceptance per position, unreached positions borrowing the last, under a neutral
    // prior (one acceptance in two). The engine judges declined drafts too (Engine::ShadowLookup),
    // so evidence arrives without paying for windows that lose.
    if (key < 0 || key >= kLookupKeys) {
        if (gain) *gain = 1.0;
        return 0;
    }
    const auto & n = lookup_n_[key];
    const auto & acc = lookup_acc_[key];
    auto rate = [&](int pos) {
        if (n.empty()) return 0.5;
        const int p = std::min(pos, (int) n.size() - 1);
        return (acc[p] + 1.0) / (n[p] + 2.0);
    };
    return best_by_rate(n_avail, verify_ms(1), rate, [&](int k, double) { return verify_ms(k + 1); }, gain);
}

std::string CostModel::to_json() const {
    std::string s = "{\"target_ms\": {";
    bool first = true;
    for (int n = 1; n < (int) tv_.size(); ++n) {
        if (!tv_known(n)) continue;
        char buf[64];
        std::snprintf(buf, sizeof buf, "%s\"%d\": %.4f", first ? "" : ", ", n, scaled(tv_[n]));
        s += buf;
        first = false;
    }
    char buf[64];
    std::snprintf(buf, sizeof buf, "}, \"draft_ms\": %.4f", draft_ms());
    s += buf;
    if (tc_.known()) {
        std::snprintf(buf, sizeof buf, ", \"catchup_ms\": %.4f", catchup_ms());
        s += buf;
    }
    return s + "}";
}

}  // namespace ppow
