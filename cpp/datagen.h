// datagen.h - training data from the target: many sequences in flight in one llama_decode,
// refilled continuously, with the target's tokens, top-k distribution and hidden states per position.
//
// Every slot of the batch is a sequence id (0..n_parallel-1) in one unified KV cache. Each step puts
// one row per generating sequence (its newest token) and prompt chunks of refilled slots into one
// batch; a sequence that ends (end-of-generation token, max_new, context) frees its slot and KV
// cells for the next prompt. One batch is one ubatch, so captured rows map to batch rows in order.
#pragma once

#include "model.h"
#include "sampling.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ppow {

struct DataGenParams {
    int max_new = 64;         // generated tokens per sequence (fed back; the last one's label is kept)
    int topk = 16;            // top-k ids and probabilities (full softmax at temperature 1) per scored row
    float temp = 0.0f;        // 0: greedy trajectory; > 0: sampled at this temperature
    uint64_t seed = 0;        // sampling: a sequence draws from Rng(seed, its prompt index)
    bool stop_at_eog = true;  // end a sequence at an end-of-generation token
    std::vector<int> layers;  // hidden-state layers (capture.h numbering), may be empty
    int host_threads = 0;     // threads for the per-row softmax/top-k/sampling (0: all cores). With the
                              // model on a GPU this host work is the engine's ceiling; results do not
                              // depend on it (each row draws from its own sequence's Rng)
    bool device_topk = false; // the softmax, top-k and argmax in the decode graph on the target's backend
                              // (device_topk.h): only k values per row reach the host. Greedy data only;
                              // on a CPU the host path is faster (one graph op per sequence, one thread each)
};

// One finished sequence. Position j holds tokens[j] as input; its label is what follows it.
struct SeqRecord {
    int64_t index = 0;                 // the prompt's index (indices[i] if given, else i)
    int prompt_len = 0;
    std::vector<int32_t> tokens;       // [N] prompt, then the generated tokens fed back
    std::vector<int32_t> greedy;       // [N] target argmax where scored, else the next prompt token
    std::vector<int32_t> next;         // [N] the trajectory's next token (sampled or greedy; last = label)
    std::vector<uint8_t> scored;       // [N] 1 where the target's logits were computed
    std::vector<int32_t> topk_ids;     // [N, K]; unscored rows: (next, 1.0) then (next, 0.0)
    std::vector<float> topk_probs;     // [N, K]
    std::vector<uint16_t> hidden;      // [N, L, H] bf16: Gemma's features reach 1e5, beyond fp16
    std::string stop;                  // eos | length | context
};

struct DataGenStats {
    int64_t sequences = 0, positions = 0, new_tokens = 0, decodes = 0, rows = 0;
    int64_t device_rows = 0;  // scored rows whose top-k came from the device sampler
    double t_decode_ms = 0.0, t_host_ms = 0.0, t_total_ms = 0.0;
};

class DataGenerator {
public:
    // `target` must have been loaded with n_parallel > 1 (or 1) and no batch-invariant padding.
    explicit DataGenerator(LlamaModel & target) : target_(target) {}

    // Generates from every prompt (token ids, BOS included as the caller wants it) and calls
    // on_done for each finished sequence, in completion order. `indices` (empty: 0..n-1) name the
    // prompts in records and seed their sampling, so a resumed run draws what the first would have.
    // `ctx_per_seq` caps prompt + new tokens of one sequence (0: n_ctx / n_parallel). Throws Error
    // on bad input or "cancelled".
    DataGenStats run(const std::vector<std::vector<llama_token>> & prompts, const std::vector<int64_t> & indices,
                     const DataGenParams & params, int ctx_per_seq, const std::function<void(SeqRecord &&)> & on_done,
                     const volatile bool * cancel);

private:
    LlamaModel & target_;
};

}  // namespace ppow
