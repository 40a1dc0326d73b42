#include "device_topk.h"

#include <algorithm>

namespace ppow {

namespace {

struct TopkSampler {
    int k;
};

int k_of(const llama_sampler * s) { return static_cast<const TopkSampler *>(s->ctx)->k; }

llama_sampler * make_topk_sampler(int k);

const char * topk_name(const llama_sampler *) { return "ppow-topk"; }

// Host form (llama.cpp calls it only where the backend path is off): keep the k largest logits.
void topk_apply(llama_sampler * s, llama_token_data_array * cur) {
    const size_t k = std::min(cur->size, (size_t) k_of(s));
    std::partial_sort(cur->data, cur->data + k, cur->data + cur->size,
                      [](const llama_token_data & a, const llama_token_data & b) { return a.logit > b.logit; });
    cur->size = k;
    cur->sorted = true;
    cur->selected = 0;
}

llama_sampler * topk_clone(const llama_sampler * s) { return make_topk_sampler(k_of(s)); }

void topk_free(llama_sampler * s) { delete static_cast<TopkSampler *>(s->ctx); }

// Every op it uses (soft_max, top_k, get_rows, argmax) runs on the CPU backend and on CUDA; where a
// backend lacks one, the scheduler runs that op on the CPU, which stays correct.
bool topk_backend_init(llama_sampler *, ggml_backend_buffer_type_t, uint32_t) { return true; }

void topk_backend_apply(llama_sampler * s, ggml_context * ctx, ggml_cgraph *, llama_sampler_data * data) {
    const int64_t n = ggml_nelements(data->logits);
    ggml_tensor * logits = ggml_reshape_1d(ctx, data->logits, n);
    ggml_tensor * probs = ggml_soft_max(ctx, logits);  // temperature 1: the target's distribution
    ggml_tensor * top = ggml_top_k(ctx, logits, k_of(s));
    data->candidates = top;
    data->probs = ggml_reshape_1d(ctx, ggml_get_rows(ctx, ggml_reshape_2d(ctx, probs, 1, n), top), k_of(s));
    data->sampled = ggml_argmax(ctx, ggml_reshape_2d(ctx, logits, n, 1));
    data->logits = nullptr;  // no full row back to the host
}

llama_sampler_i g_topk_iface = {
    /* .name              = */ topk_name,
    /* .accept            = */ nullptr,
    /* .apply             = */ topk_apply,
    /* .reset             = */ nullptr,
    /* .clone             = */ topk_clone,
    /* .free              = */ topk_free,
    /* .backend_init      = */ topk_backend_init,
    /* .backend_accept    = */ nullptr,
    /* .backend_apply     = */ topk_backend_apply,
    /* .backend_set_input = */ nullptr,
    /* .backend_reset     = */ nullptr,
    /* .copy_state        = */ nullptr,
};

llama_sampler * make_topk_sampler(int k) { return llama_sampler_init(&g_topk_iface, new TopkSampler{k}); }

}  // namespace

llama_sampler * make_device_topk_chain(int k) {
    llama_sampler * chain = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(chain, make_topk_sampler(k));
    return chain;
}

}  // namespace ppow
