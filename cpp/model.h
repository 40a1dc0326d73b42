// model.h - one GGUF model with its own llama_context (and so its own KV cache), sequence 0 only.
#pragma once

#include "capture.h"

#include <llama.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ppow {

// Every failure the engine reports to Python is an Error with a message fit for a user.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct ModelParams {
    std::string path;
    int n_gpu_layers = 0;   // -1: all layers
    int n_ctx = 4096;       // 0: the model's training context
    int n_batch = 512;      // largest batch handed to one llama_decode
    int n_threads = 0;      // 0: all hardware threads
    // Pad one-token decodes to two rows so they take the same attention kernel as verify batches
    // (see LlamaModel::decode). Only acts on CPU: with flash attention past kPadSingleFrom tokens
    // and several threads, without it on every one-token decode.
    bool batch_invariant = true;
    // llama.cpp's flash attention: "auto" (llama.cpp decides; on for CPU), "on" or "off". On a CPU
    // "off" decodes deep contexts faster for some targets (README, plain decoding by depth).
    std::string flash_attn = "auto";
    // Sequences the context holds at once (one unified KV cache): > 1 only for batched data
    // generation, where sequence ids 0..n_parallel-1 are driven directly through ctx().
    int n_parallel = 1;
    // Fixed-width decoding on any backend: every decode of fewer rows than this in sequence 0 gets
    // throw-away rows in sequence 1 up to this width, and they are output rows too (so the last
    // layer and the lm head see the same number of rows as well). With verify_batch_max <= pad_rows
    // every generation decode has exactly pad_rows rows. 0: off (the CPU's own rule above still
    // pads one-token decodes); -1: from the environment variable PPOW_PAD_ROWS, else the backend's
    // rule (with batch_invariant and layers on a GPU: kGpuPadRows; on the CPU: 0, or 2 for targets
    // with F32/F16/BF16 matrices).
    int pad_rows = -1;
    // Drafters only: "auto" (from the file: eagle3 GGUFs are feature drafters), "model" or "feature".
    std::string kind = "auto";
    // A feature drafter's context borrows the target's token embeddings (llama.cpp's ctx_other).
    llama_context * ctx_other = nullptr;
};

// Capture llama.cpp's log so a failed load can say why; silent unless PPOW_VERBOSE is set.
void install_log_capture();
std::string last_llama_error();

class LlamaModel {
public:
    explicit LlamaModel(const ModelParams & params);
    ~LlamaModel();
    LlamaModel(const LlamaModel &) = delete;
    LlamaModel & operator=(const LlamaModel &) = delete;

    const llama_vocab * vocab() const { return vocab_; }
    llama_context * ctx() const { return ctx_; }
    llama_model * model() const { return model_; }
    int n_vocab() const { return n_vocab_; }
    int n_ctx() const { return n_ctx_; }
    int n_batch() const { return n_batch_; }
    const std::string & path() const { return path_; }
    // What the model was loaded with (pad_rows resolved from the environment).
    const ModelParams & params() const { return params_; }
    // Layers llama.cpp offloaded to a GPU: 0 when no GPU device is present, whatever n_gpu_layers asked.
    int gpu_layers() const { return gpu_layers_; }
    // Names of the GPU devices this build sees ("" when none).
    static std::string gpu_devices();
    int n_threads() const { return n_threads_; }
    bool flash_attn() const { return flash_; }
    bool pads_single() const { return pad_single_; }
    // One-token decodes kept on flash attention's per-row kernel by ggml's use_ref switch instead
    // of a padding row (model.cpp, find_cpu_ref_switch).
    bool ref_attention() const { return set_use_ref_ != nullptr; }
    int pad_rows() const { return pad_rows_; }
    // The width every generation decode is padded to by design (asked, or the GPU rule), 0 if none:
    // the engine caps its verify batches there so every decode has exactly that many rows.
    int fixed_width() const { return fixed_width_; }
    static constexpr int kGpuPadRows = 4;
    // F32/F16/BF16 matrices: on the CPU one-row products sum differently from batched ones.
    bool float_matrices() const { return float_matrices_; }
    int n_layer() const { return llama_model_n_layer(model_); }
    int n_embd() const { return llama_model_n_embd(model_); }
    // Hidden-state capture on every decode of this context (inactive until layers are set).
    FeatureCapture & capture() { return *capture_; }

    // Tokens known to be in the KV cache, in position order. The engine keeps this exact.
    const std::vector<llama_token> & cached() const { return cached_; }

    // Append tokens to the cache (positions continue from cached().size()); logits are produced
    // for the last `n_logits` of them, in order. Chunks by n_batch. Returns forward time in ms.
    double decode(const llama_token * tokens, int n, int n_logits);
    // Logits row `i` (0-based among the rows requested by the last decode).
    const float * logits(int i) const;
    // Drop every cached position >= n.
    void truncate(int n);
    // Longest common prefix of the cache with `tokens`, capped so at least `keep_last`
    // tokens of `tokens` remain to be decoded.
    int common_prefix(const std::vector<llama_token> & tokens, int keep_last) const;

    void set_abort_flag(const volatile bool * flag);

private:
    std::string path_;
    ModelParams params_;
    llama_model * model_ = nullptr;
    llama_context * ctx_ = nullptr;
    const llama_vocab * vocab_ = nullptr;
    std::unique_ptr<FeatureCapture> capture_;  // outlives ctx_, whose eval callback points at it
    llama_batch batch_{};
    int n_vocab_ = 0, n_ctx_ = 0, n_batch_ = 0;
    bool pad_single_ = false;
    int pad_from_ = 0;  // cached tokens from which one-token decodes are padded
    int pad_rows_ = 0;  // decodes of fewer rows are padded to this width, 0: off
    int fixed_width_ = 0;
    int gpu_layers_ = 0, n_threads_ = 1;
    bool flash_ = true, float_matrices_ = false;
    int first_out_ = 0;  // batch index of the first requested output row of the last decode
    // ggml's CPU use_ref switch (null: not found or not needed); on for decodes of <= kRefRowsMax rows.
    static constexpr int kRefRowsMax = 16;
    ggml_backend_t ref_backend_ = nullptr;
    void (*set_use_ref_)(ggml_backend_t, bool) = nullptr;
    bool use_ref_on_ = false;
    std::vector<llama_token> cached_;
};

// Reads a GGUF file's integer array metadata (e.g. a draft-vocabulary map) without loading tensors.
std::vector<int32_t> gguf_int_array(const std::string & path, const char * key);

// A GGUF file's metadata, read without loading its tensors.
class GgufMeta {
public:
    explicit GgufMeta(const std::string & path);
    ~GgufMeta();
    GgufMeta(const GgufMeta &) = delete;
    GgufMeta & operator=(const GgufMeta &) = delete;
    bool has(const char * key) const;
    std::string str(const char * key) const;              // "" when missing
    int64_t integer(const char * key, int64_t dflt) const; // any integer type; dflt when missing
    // An I64 or I32 tensor's values (e.g. eagle3's d2t); empty when the tensor is missing.
    std::vector<int64_t> int_tensor(const char * name) const;
private:
    std::string path_;
    struct gguf_context * g_ = nullptr;
};

double now_ms();

}  // namespace ppow
