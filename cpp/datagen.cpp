#include "datagen.h"

#include "device_topk.h"
#include "topk.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>

namespace ppow {

namespace {

// Round-to-nearest-even fp32 -> bf16 (NaN stays NaN).
inline uint16_t to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t) ((u >> 16) | 64);
    return (uint16_t) ((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

struct Slot {
    bool active = false;
    std::vector<llama_token> prompt;
    SeqRecord rec;
    int fed = 0;              // this sequence's tokens in the KV cache (positions 0..fed-1)
    int n_new = 0;            // generated tokens fed back so far
    llama_token pending = -1; // generated token to feed next
    Rng rng;
};

// One row of the batch: whose, and which position.
struct Row {
    int slot;
    int pos;
    bool logits;
};

// What the host computes from one row's logits: the target's argmax and top-k, and the next token.
struct RowResult {
    int best = -1;
    llama_token next = -1;
    std::vector<int32_t> ids;
    std::vector<float> probs;
};

// fn(i) for i in [0, n) on up to n_threads threads (the caller's included). Work is taken one index
// at a time: rows cost the same, so this balances without chunking. Exceptions do not cross: fn
// must not throw (the top-k and sampling code does not).
template <typename F>
void parallel_for(int n, int n_threads, const F & fn) {
    n_threads = std::max(1, std::min(n_threads, n));
    std::atomic<int> next{0};
    auto work = [&] {
        for (int i; (i = next.fetch_add(1)) < n;) fn(i);
    };
    std::vector<std::thread> pool;
    pool.reserve(n_threads - 1);
    for (int t = 1; t < n_threads; ++t) pool.emplace_back(work);
    work();
    for (auto & th : pool) th.join();
}

// The device top-k sampler's output for batch row r: the argmax and the k ids by descending
// probability (ties by id, as topk_softmax orders them; the device returns them in no order).
void read_device_topk(llama_context * ctx, int r, int K, RowResult & res) {
    const llama_token * ids = llama_get_sampled_candidates_ith(ctx, r);
    const float * probs = llama_get_sampled_probs_ith(ctx, r);
    if (!ids || !probs || (int) llama_get_sampled_candidates_count_ith(ctx, r) != K ||
        (int) llama_get_sampled_probs_count_ith(ctx, r) != K)
        throw Error("the device top-k sampler returned no result for a scored row");
    std::vector<int> order(K);
    for (int j = 0; j < K; ++j) order[j] = j;
    std::sort(order.begin(), order.end(), [&](int a, int b) {
        return probs[a] != probs[b] ? probs[a] > probs[b] : ids[a] < ids[b];
    });
    res.ids.resize(K);
    res.probs.resize(K);
    for (int j = 0; j < K; ++j) {
        res.ids[j] = ids[order[j]];
        res.probs[j] = probs[order[j]];
    }
    res.best = llama_get_sampled_token_ith(ctx, r);
    if (res.best == LLAMA_TOKEN_NULL) throw Error("the device top-k sampler returned no token for a scored row");
    res.next = res.best;
}

}  // namespace

DataGenStats DataGenerator::run(const std::vector<std::vector<llama_token>> & prompts,
                                const std::vector<int64_t> & indices, const DataGenParams & p,
                                int ctx_per_seq, const std::function<void(SeqRecord &&)> & on_done,
                                const volatile bool * cancel) {
    llama_context * ctx = target_.ctx();
    const llama_vocab * vocab = target_.vocab();
    const int n_vocab = target_.n_vocab();
    const int n_par = (int) llama_n_seq_max(ctx);
    const int n_batch = target_.n_batch();
    if (ctx_per_seq <= 0) ctx_per_seq = target_.n_ctx() / n_par;
    if (p.max_new < 0) throw Error("max_new must be >= 0");
    if (p.topk < 1 || p.topk > 1024 || p.topk > n_vocab) throw Error("topk must be in [1, min(1024, n_vocab)]");
    if (!(p.temp >= 0.0f) || std::isinf(p.temp)) throw Error("temperature must be >= 0");
    if (p.host_threads < 0 || p.host_threads > 1024) throw Error("host_threads must be in [0, 1024] (0: all cores)");
    if (p.device_topk && p.temp > 0.0f)
        throw Error("top-k on the device makes greedy data only: sampled data (temp > 0) takes the host path");
    const int host_threads = p.host_threads > 0 ? p.host_threads : std::max(1u, std::thread::hardware_concurrency());
    if ((int64_t) ctx_per_seq * n_par > (int64_t) llama_n_ctx(ctx))
        throw Error("ctx_per_seq x n_parallel (" + std::to_string((int64_t) ctx_per_seq * n_par) +
                    ") exceeds the context (" + std::to_string(llama_n_ctx(ctx)) + ")");
    for (int k : p.layers)
        if (k == target_.n_layer())
            throw Error("layer " + std::to_string(k) + " (the final norm) exists only for rows with logits; "
                        "data generation captures every row: use a layer below " + std::to_string(k));
    if (!indices.empty() && indices.size() != prompts.size())
        throw Error("indices must be empty or one per prompt");
    for (size_t i = 0; i < prompts.size(); ++i) {
        const auto & pr = prompts[i];
        if (pr.empty()) throw Error("prompt " + std::to_string(i) + " is empty");
        if ((int) pr.size() >= ctx_per_seq)
            throw Error("prompt " + std::to_string(i) + " has " + std::to_string(pr.size()) +
                        " tokens; a sequence holds " + std::to_string(ctx_per_seq) + " (raise n_ctx)");
        for (llama_token t : pr)
            if (t < 0 || t >= n_vocab) throw Error("prompt " + std::to_string(i) + ": token id " + std::to_string(t) +
                                                   " is outside the vocabulary");
    }

    FeatureCapture & cap = target_.capture();
    const CaptureScope scope(cap, p.layers);
    const int L = (int) p.layers.size(), H = target_.n_embd(), K = p.topk;

    llama_memory_t mem = llama_get_memory(ctx);
    llama_memory_clear(mem, true);
    llama_batch batch = llama_batch_init(n_batch, 0, 1);
    // One device top-k sampler chain per sequence id, detached and freed however run() ends.
    std::vector<llama_sampler *> chains;
    struct Free {
        llama_batch & b;
        llama_memory_t m;
        llama_context * c;
        std::vector<llama_sampler *> & chains;
        ~Free() {
            for (size_t s = 0; s < chains.size(); ++s) {
                llama_set_sampler(c, (llama_seq_id) s, nullptr);
                llama_sampler_free(chains[s]);
            }
            llama_batch_free(b);
            llama_memory_clear(m, true);
        }
    } free_batch{batch, mem, ctx, chains};
    if (p.device_topk)
        for (int s = 0; s < n_par; ++s) {
            chains.push_back(make_device_topk_chain(K));
            if (!llama_set_sampler(ctx, s, chains.back()))
                throw Error("the target's backend refused the device top-k sampler" +
                            (last_llama_error().empty() ? std::string() : ": " + last_llama_error()));
        }

    DataGenStats st;
    const double t_start = now_ms();
    std::vector<Slot> slots(n_par);
    size_t next_prompt = 0;
    auto refill = [&](int s) {
        Slot & sl = slots[s];
        sl = Slot();
        if (next_prompt >= prompts.size()) return;
        sl.active = true;
        sl.prompt = prompts[next_prompt];
        sl.rec.index = indices.empty() ? (int64_t) next_prompt : indices[next_prompt];
        sl.rec.prompt_len = (int) sl.prompt.size();
        sl.rng.seed(p.seed * 0x9E3779B97F4A7C15ull + (uint64_t) sl.rec.index);
        ++next_prompt;
    };
    for (int s = 0; s < n_par; ++s) refill(s);

    std::vector<Row> rows;
    std::vector<int> logit_rows;        // batch rows with logits, in batch order
    std::vector<const float *> logit_ptrs;  // their logits
    std::vector<RowResult> results;     // one per batch row (filled for rows with logits)
    for (;;) {
        if (cancel && *cancel) throw Error("cancelled");
        // Build one batch: every generating sequence's newest token first, then prompt chunks.
        rows.clear();
        batch.n_tokens = 0;
        auto add = [&](int s, llama_token t, int pos, bool logits) {
            const int i = batch.n_tokens++;
            batch.token[i] = t;
            batch.pos[i] = pos;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = s;
            batch.logits[i] = logits;
            rows.push_back({s, pos, logits});
        };
        for (int s = 0; s < n_par && batch.n_tokens < n_batch; ++s) {
            Slot & sl = slots[s];
            if (sl.active && sl.fed >= (int) sl.prompt.size()) add(s, sl.pending, sl.fed, true);
        }
        for (int s = 0; s < n_par && batch.n_tokens < n_batch; ++s) {
            Slot & sl = slots[s];
            if (!sl.active) continue;
            const int P = (int) sl.prompt.size();
            for (int j = sl.fed; j < P && batch.n_tokens < n_batch; ++j) add(s, sl.prompt[j], j, j == P - 1);
        }
        if (batch.n_tokens == 0) break;  // every prompt done

        int n_out = 0;
        for (const Row & r : rows) n_out += r.logits;
        cap.clear();
        cap.begin_ubatch(batch.n_tokens, n_out);
        const double t0 = now_ms();
        const int rc = llama_decode(ctx, batch);
        if (rc == 2) throw Error("cancelled");
        if (rc != 0) throw Error("llama_decode failed (code " + std::to_string(rc) + ")" +
                                 (last_llama_error().empty() ? "" : ": " + last_llama_error()));
        llama_synchronize(ctx);
        const double t1 = now_ms();
        cap.end_ubatch();
        st.t_decode_ms += t1 - t0;
        st.decodes += 1;
        st.rows += batch.n_tokens;

        // The full-vocabulary softmax, top-k and draw of every scored row, in parallel: on a GPU this is
        // most of a step. Each row reads only its own logits and its own sequence's Rng (one scored row
        // per sequence per batch), so the result does not depend on the thread count.
        // llama_get_logits_ith may reorder the outputs on its first call: take every pointer before going parallel.
        logit_rows.clear();
        logit_ptrs.clear();
        for (int r = 0; r < (int) rows.size(); ++r)
            if (rows[r].logits) {
                logit_rows.push_back(r);
                if (!p.device_topk) logit_ptrs.push_back(llama_get_logits_ith(ctx, r));
            }
        if (results.size() < rows.size()) results.resize(rows.size());
        if (p.device_topk) {
            for (int r : logit_rows) read_device_topk(ctx, r, K, results[r]);
            st.device_rows += (int64_t) logit_rows.size();
        } else parallel_for((int) logit_rows.size(), host_threads, [&](int i) {
            const int r = logit_rows[i];
            RowResult & res = results[r];
            res.ids.resize(K);
            res.probs.resize(K);
            const float * lg = logit_ptrs[i];
            res.best = topk_softmax(lg, n_vocab, K, res.ids.data(), res.probs.data());
            res.next = p.temp > 0.0f ? sample_softmax(lg, n_vocab, p.temp, slots[rows[r].slot].rng) : res.best;
        });

        for (int r = 0; r < (int) rows.size(); ++r) {
            Slot & sl = slots[rows[r].slot];
            SeqRecord & rec = sl.rec;
            const bool prompt_row = sl.fed < (int) sl.prompt.size();
            const llama_token fed_tok = prompt_row ? sl.prompt[sl.fed] : sl.pending;
            rec.tokens.push_back(fed_tok);
            sl.fed += 1;
            if (!prompt_row) sl.n_new += 1;
            for (int li = 0; li < L; ++li) {
                const float * h = cap.rows(li) + (size_t) r * H;
                for (int c = 0; c < H; ++c) rec.hidden.push_back(to_bf16(h[c]));
            }
            if (!rows[r].logits) {  // a prompt row: its label is the prompt's own next token
                const llama_token nxt = sl.prompt[sl.fed];
                rec.greedy.push_back(nxt);
                rec.next.push_back(nxt);
                rec.scored.push_back(0);
                for (int j = 0; j < K; ++j) {
                    rec.topk_ids.push_back(nxt);
                    rec.topk_probs.push_back(j == 0 ? 1.0f : 0.0f);
                }
                continue;
            }
            const RowResult & res = results[r];
            const llama_token nxt = res.next;
            rec.greedy.push_back(res.best);
            rec.next.push_back(nxt);
            rec.scored.push_back(1);
            rec.topk_ids.insert(rec.topk_ids.end(), res.ids.begin(), res.ids.end());
            rec.topk_probs.insert(rec.topk_probs.end(), res.probs.begin(), res.probs.end());

            const char * stop = nullptr;
            if (p.stop_at_eog && llama_vocab_is_eog(vocab, nxt)) stop = "eos";
            else if (sl.n_new >= p.max_new) stop = "length";
            else if (sl.fed >= ctx_per_seq) stop = "context";
            if (!stop) {
                sl.pending = nxt;
                continue;
            }
            rec.stop = stop;
            st.sequences += 1;
            st.positions += (int64_t) rec.tokens.size();
            st.new_tokens += sl.n_new;
            llama_memory_seq_rm(mem, rows[r].slot, -1, -1);
            on_done(std::move(rec));
            refill(rows[r].slot);
        }
        st.t_host_ms += now_ms() - t1;
    }
    st.t_total_ms = now_ms() - t_start;
    return st;
}

}  // namespace ppow
