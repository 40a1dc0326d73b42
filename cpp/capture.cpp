#include "capture.h"

#include "model.h"

#include <cstring>

namespace ppow {

void FeatureCapture::set_layers(const std::vector<int> & layers) {
    for (int k : layers)
        if (k < 0 || k > n_layer_)
            throw Error("hidden-state layer " + std::to_string(k) + " does not exist: this target has layers 0.." +
                        std::to_string(n_layer_) + " (0 = input embeddings, " + std::to_string(n_layer_) +
                        " = final norm output)");
    layers_ = layers;
    names_.clear();
    for (int k : layers_)
        names_.push_back(k == 0 ? "inp_scaled" : k == n_layer_ ? "result_norm" : "l_out-" + std::to_string(k - 1));
    buf_.assign(layers_.size(), {});
    seen_.assign(layers_.size(), 0);
}

void FeatureCapture::set_nodes(const std::vector<std::string> & names) {
    names_ = names;
    layers_.assign(names.size(), -1);
    buf_.assign(names.size(), {});
    seen_.assign(names.size(), 0);
}

void FeatureCapture::clear() {
    for (auto & b : buf_) b.clear();
}

void FeatureCapture::begin_ubatch(int n_rows, int n_out) {
    ub_rows_ = n_rows;
    ub_out_ = n_out;
    std::fill(seen_.begin(), seen_.end(), 0);
    embd_fallback_.clear();
    error_.clear();
    in_ubatch_ = true;
}

void FeatureCapture::end_ubatch() {
    in_ubatch_ = false;
    if (!error_.empty()) throw Error(error_);
    for (size_t i = 0; i < layers_.size(); ++i) {
        if (seen_[i]) continue;
        if (layers_[i] == 0 && !embd_fallback_.empty()) {  // a graph that does not scale its embeddings
            buf_[i].insert(buf_[i].end(), embd_fallback_.begin(), embd_fallback_.end());
            continue;
        }
        const int want = layers_[i] == n_layer_ ? ub_out_ : ub_rows_;
        if (want == 0) continue;  // final-norm rows exist only for rows with logits
        if (layers_[i] < 0) throw Error("graph node '" + names_[i] + "' was not produced by this model's graph");
        throw Error("hidden-state layer " + std::to_string(layers_[i]) + " (graph node '" + names_[i] +
                    "') was not produced by this model's graph: this architecture names its layers differently");
    }
}

bool FeatureCapture::wanted(const char * name) const {
    for (size_t i = 0; i < names_.size(); ++i)
        if (names_[i] == name || (layers_[i] == 0 && std::strcmp(name, "embd") == 0)) return true;
    return false;
}

void FeatureCapture::take(int slot, bool embd_fallback, const ggml_tensor * t) {
    if (t->type != GGML_TYPE_F32 || t->ne[0] != n_embd_ || t->ne[2] != 1 || t->ne[3] != 1) {
        if (error_.empty())
            error_ = std::string("graph node '") + ggml_get_name(t) + "' is not an F32 [n_embd, rows] tensor";
        return;
    }
    const bool out_rows_only = layers_[slot] == n_layer_;
    const int want = out_rows_only ? ub_out_ : ub_rows_;
    if (t->ne[1] < want) {
        if (error_.empty())
            error_ = std::string("graph node '") + ggml_get_name(t) + "' has " + std::to_string(t->ne[1]) +
                     " rows, expected " + std::to_string(want);
        return;
    }
    std::vector<float> & dst = embd_fallback ? embd_fallback_ : buf_[slot];
    const size_t row_bytes = (size_t) n_embd_ * sizeof(float);
    const size_t at = dst.size();
    dst.resize(at + (size_t) want * n_embd_);
    if (t->nb[1] == row_bytes) {
        ggml_backend_tensor_get(t, dst.data() + at, 0, (size_t) want * row_bytes);
    } else {  // a strided view: copy row by row
        for (int r = 0; r < want; ++r)
            ggml_backend_tensor_get(t, dst.data() + at + (size_t) r * n_embd_, (size_t) r * t->nb[1], row_bytes);
    }
    if (!embd_fallback) seen_[slot] = 1;
}

bool FeatureCapture::eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * self = static_cast<FeatureCapture *>(user_data);
    if (!self->in_ubatch_ || self->layers_.empty()) return ask ? false : true;
    const char * name = ggml_get_name(t);
    if (ask) return self->wanted(name);
    // Every slot asking for this node (a layer may be requested twice, as eagle3 drafters may).
    bool fallback_taken = false;
    for (size_t i = 0; i < self->names_.size(); ++i) {
        if (self->names_[i] == name) {
            self->take((int) i, false, t);
        } else if (self->layers_[i] == 0 && std::strcmp(name, "embd") == 0 && !fallback_taken) {
            self->take((int) i, true, t);  // one copy, used by every k = 0 slot in end_ubatch()
            fallback_taken = true;
        }
    }
    return true;  // false would stop the graph computation
}

}  // namespace ppow
