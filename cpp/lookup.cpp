#include "lookup.h"

#include <algorithm>

namespace ppow {

LookupDraft lookup_draft(const std::vector<llama_token> & hist, int n_max, int max_ngram) {
    const int n = (int) hist.size();
    for (int g = std::min(max_ngram, n - 1); g >= 1 && n_max > 0; --g) {
        const llama_token * tail = hist.data() + n - g;
        int best_s = -1, best_m = 0;
        // occurrences followed by at least one token, latest first
        for (int s = n - g - 1; s >= 0 && best_m < kLookupMatchMax; --s) {
            if (!std::equal(tail, tail + g, hist.data() + s)) continue;
            int m = g;  // extend the agreement backwards: hist[s - 1 - j] vs hist[n - g - 1 - j]
            while (m < kLookupMatchMax && s - (m - g) - 1 >= 0 && hist[s - (m - g) - 1] == hist[n - m - 1]) ++m;
            if (m > best_m) {
                best_s = s;
                best_m = m;
            }
        }
        if (best_s < 0) continue;
        const int from = best_s + g, len = std::min(n_max, n - from);
        return {std::vector<llama_token>(hist.begin() + from, hist.begin() + from + len), g, best_m};
    }
    return {};
}

int lookup_key(int match) {
    return match <= 1 ? 0 : match <= 2 ? 1 : match <= 4 ? 2 : match <= 8 ? 3 : 4;
}

}  // namespace ppow
