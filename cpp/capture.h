// capture.h - the target's hidden states, read out of llama.cpp's graph while it decodes.
//
// Layers are counted as Hugging Face counts `hidden_states` (and llama.cpp's eagle3.target_layers):
// k = 0 is the (scaled) input embedding, k = i in [1, n_layer) the residual stream after layer i-1
// (the input of layer i), k = n_layer the final norm's output. llama.cpp names these graph nodes
// `inp_scaled` (Gemma's sqrt(n_embd)-scaled embeddings; `embd` in graphs that do not scale),
// `l_out-(k-1)` and `result_norm`; the
// eval callback (llama_context_params.cb_eval) asks for exactly those and copies them out, which
// works for every architecture whose graph uses llama.cpp's standard names. k = n_layer exists only
// for rows that produce logits (the graph drops the other rows before the last layer's FFN).
#pragma once

#include <ggml-backend.h>

#include <string>
#include <vector>

namespace ppow {

class FeatureCapture {
public:
    FeatureCapture(int n_layer, int n_embd) : n_layer_(n_layer), n_embd_(n_embd) {}

    // Layers to capture from now on (empty: capture nothing, the callback asks for no node).
    // Throws Error for an index outside [0, n_layer].
    void set_layers(const std::vector<int> & layers);
    // Or graph nodes by name, every row (a drafter's own states: `fc_out`, `eagle3_prenorm-0`).
    void set_nodes(const std::vector<std::string> & names);
    const std::vector<int> & layers() const { return layers_; }
    bool active() const { return !layers_.empty(); }
    int n_embd() const { return n_embd_; }
    int n_layer() const { return n_layer_; }

    // Around every llama_decode (one ubatch): `n_rows` rows of the batch are kept (a trailing
    // padding row is not), `n_out` of them produce logits. clear() drops rows of earlier decodes.
    void clear();
    void begin_ubatch(int n_rows, int n_out);
    // Throws Error naming the first requested layer the graph did not produce.
    void end_ubatch();

    // Rows captured since clear() for the i-th requested layer: n_rows(i) x n_embd floats.
    const float * rows(int i) const { return buf_[i].data(); }
    int n_rows(int i) const { return (int) (buf_[i].size() / n_embd_); }

    // ggml_backend_sched_eval_callback; user_data is the FeatureCapture.
    static bool eval_callback(ggml_tensor * t, bool ask, void * user_data);

private:
    bool wanted(const char * name) const;
    void take(int slot, bool embd_fallback, const ggml_tensor * t);

    int n_layer_, n_embd_;
    std::vector<int> layers_;              // requested layer per slot (-1: a node asked for by name)
    std::vector<std::string> names_;       // graph node name per requested layer
    std::vector<std::vector<float>> buf_;  // per requested layer, rows x n_embd
    std::vector<float> embd_fallback_;     // `embd` rows of this ubatch, used when no `inp_scaled` came
    std::vector<int> seen_;                // rows taken this ubatch, per requested layer
    int ub_rows_ = 0, ub_out_ = 0;
    bool in_ubatch_ = false;
    std::string error_;                    // first problem met inside the callback
};

// Capture at `layers` while this object lives; off again afterwards, whatever happens.
class CaptureScope {
public:
    CaptureScope(FeatureCapture & c, const std::vector<int> & layers) : c_(c) { c_.set_layers(layers); }
    ~CaptureScope() { c_.set_layers({}); }
    CaptureScope(const CaptureScope &) = delete;
    CaptureScope & operator=(const CaptureScope &) = delete;

private:
    FeatureCapture & c_;
};

}  // namespace ppow
