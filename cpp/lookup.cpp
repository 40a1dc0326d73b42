#include "lookup.h"

#include <algorithm>

namespace ppow {

LookupDraft lookup_draft(const std::vector<llama_token> & hist, int n_max, int max_ngram) {
    const int n = (int) hist.size();
    for (int g = std::min(max_ngram, n - 1); g >= 1 && n_max > 0; --g) {
        const llama_token * tail = hist.data() + n - g;
        // latest earlier occurrence that is followed by at least one token
        for (int s = n - g - 1; s >= 0; --s) {
            if (!std::equal(tail, tail + g, hist.data() + s)) continue;
            const int from = s + g, len = std::min(n_max, n - from);
            return {std::vector<llama_token>(hist.begin() + from, hist.begin() + from + len), g};
        }
    }
    return {};
}

}  // namespace ppow
