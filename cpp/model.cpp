#include "model.h"

#include "gguf_check.h"

#include <ggml-backend.h>
#include <gguf.h>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#define PPOW_HAVE_DLFCN 1
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>

namespace ppow {

namespace {
std::mutex g_log_mutex;
std::string g_last_error;
bool g_verbose = false;

void log_callback(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        if (level == GGML_LOG_LEVEL_ERROR) g_last_error += text;
    }
    if (g_verbose) std::fputs(text, stderr);
}

}  // namespace

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

void install_log_capture() {
    static std::once_flag once;
    std::call_once(once, [] {
        const char * v = std::getenv("PPOW_VERBOSE");
        g_verbose = v && *v && std::strcmp(v, "0") != 0;
        llama_backend_init();
    });
    // llama_cpp (Python) installs its own callback on import; re-assert ours when we load.
    llama_log_set(log_callback, nullptr);
}

std::string last_llama_error() {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    std::string e = g_last_error;
    // A refused model: llama_model_load logs the reason, then a generic "failed to load model".
    const char * reason = "error loading model: ";
    if (auto at = e.find(reason); at != std::string::npos) {
        e = e.substr(at + std::strlen(reason));
        return e.substr(0, e.find('\n'));
    }
    while (!e.empty() && (e.back() == '\n' || e.back() == ' ')) e.pop_back();
    auto nl = e.rfind('\n');
    return nl == std::string::npos ? e : e.substr(nl + 1);
}

static bool abort_cb(void * data) {
    auto * flag = static_cast<const volatile bool *>(data);
    return flag && *flag;
}

// llama.cpp's CPU flash attention splits the KV range of a ONE-query decode among threads once the
// cache view reaches 512 cells (ops.cpp, use_split_kv_path), which sums in another order than the
// per-row path every multi-token batch takes: the same position then gets slightly different logits
// from a plain step and from a verify batch, and near-tied argmaxes flip at depth. A throw-away row
// in sequence 1 (masked out of sequence 0's attention, no logits) makes every decode a batch, so
// plain steps, bonus-only steps and verify batches all compute each row the same way. The view is
// padded to 256 cells, so the split starts once 257 cells are used; start padding a little earlier.
// Without flash attention the one-token decode differs at every depth, on any number of threads:
// its query is contiguous, so KQ goes through llamafile's sgemm, while a batch's permuted query takes
// ggml's own dot products. There every one-token decode is padded.
static constexpr int kPadSingleFrom = 192;

// The other way to keep a one-query flash-attention decode on the per-row kernel: ggml's CPU backend
// has a public `use_ref` switch (ggml_backend_cpu_set_use_ref) that turns off the KV split and the
// tiled path for every row count (and op fusion), so plain steps need no padding row, which costs a
// whole extra row of every matrix product (1.6x a one-row decode on SmolLM2's Q4_1 body). llama.cpp
// keeps its context's backends private; its exported accessor llama_context::get_sched (looked up by
// name in the libllama already loaded, so a build without it keeps the padding rule) gives the
// scheduler, whose backends are public. The Itanium C++ ABI passes `this` as the first argument.
struct CpuRefSwitch {
    ggml_backend_t backend = nullptr;
    void (*set)(ggml_backend_t, bool) = nullptr;
};

static CpuRefSwitch find_cpu_ref_switch(llama_context * ctx) {
    CpuRefSwitch sw;
#ifdef PPOW_HAVE_DLFCN
    const char * env = std::getenv("PPOW_CPU_REF");  // "0": keep the padding rule (to compare the two)
    if (env && std::strcmp(env, "0") == 0) return sw;
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("CPU");
    if (!reg) return sw;
    auto set = (void (*)(ggml_backend_t, bool)) ggml_backend_reg_get_proc_address(reg, "ggml_backend_cpu_set_use_ref");
    Dl_info info{};
    if (!set || !dladdr((void *) &llama_decode, &info) || !info.dli_fname) return sw;
    void * lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (!lib) return sw;
    using GetSched = ggml_backend_sched_t (*)(const llama_context *);
    auto get_sched = (GetSched) dlsym(lib, "_ZNK13llama_context9get_schedEv");
    dlclose(lib);  // RTLD_NOLOAD: only drops the reference this call added
    ggml_backend_sched_t sched = get_sched ? get_sched(ctx) : nullptr;
    if (!sched) return sw;
    for (int i = 0; i < ggml_backend_sched_get_n_backends(sched); ++i) {
        ggml_backend_t b = ggml_backend_sched_get_backend(sched, i);
        ggml_backend_dev_t dev = b ? ggml_backend_get_device(b) : nullptr;
        if (dev && ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) {
            sw.backend = b;
            sw.set = set;
            return sw;
        }
    }
#else
    (void) ctx;
#endif
    return sw;
}

std::string LlamaModel::gpu_devices() {
    std::string names;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const auto type = ggml_backend_dev_type(dev);
        if (type != GGML_BACKEND_DEVICE_TYPE_GPU && type != GGML_BACKEND_DEVICE_TYPE_IGPU) continue;
        names += (names.empty() ? "" : ", ") + std::string(ggml_backend_dev_name(dev));
    }
    return names;
}

// Whether a matrix the graph multiplies by is stored as F32, F16 or BF16. On x86 llama.cpp's CPU backend
// multiplies those through llamafile's sgemm from 2 rows on and through ggml's own dot products for one
// row, which sum in another order (measured: a tiny F32 target's logits 7e-7 apart), so a one-row
// decode must not happen there at all. (Quantized types ppow meets take the same path either way:
// tests/test_engine_real.py checks Gemma 3's mix bit for bit.)
static bool has_float_matrices(const std::string & path) {
    ggml_context * meta = nullptr;
    gguf_init_params ip = {/*no_alloc*/ true, /*ctx*/ &meta};
    gguf_context * g = gguf_init_from_file(path.c_str(), ip);
    bool found = false;
    if (g && meta) {
        for (ggml_tensor * t = ggml_get_first_tensor(meta); t && !found; t = ggml_get_next_tensor(meta, t)) {
            const bool matrix = ggml_n_dims(t) >= 2 && t->ne[0] > 1 && t->ne[1] > 1;
            found = matrix && (t->type == GGML_TYPE_F32 || t->type == GGML_TYPE_F16 || t->type == GGML_TYPE_BF16);
        }
    }
    if (meta) ggml_free(meta);
    if (g) gguf_free(g);
    return found;
}

// ModelParams::pad_rows, -1 resolved from PPOW_PAD_ROWS (the GPU check flips it without code changes).
static int resolve_pad_rows(int asked) {
    if (asked >= 0) return asked;
    const char * env = std::getenv("PPOW_PAD_ROWS");
    if (!env || !*env) return -1;  // not asked: the backend's rule
    char * end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (*end != '\0' || v < 0 || v > 64) throw Error(std::string("PPOW_PAD_ROWS must be an integer in [0, 64], got '") + env + "'");
    return (int) v;
}

LlamaModel::LlamaModel(const ModelParams & p) : path_(p.path), params_(p) {
    install_log_capture();
    check_gguf(p.path);  // a malformed file must not reach llama.cpp, whose loader can abort on one
    if (p.n_ctx < 0) throw Error("n_ctx must be >= 0");
    if (p.n_batch < 1) throw Error("n_batch must be >= 1");
    if (p.n_parallel < 1 || p.n_parallel > 256) throw Error("n_parallel must be in [1, 256]");
    if (p.flash_attn != "auto" && p.flash_attn != "on" && p.flash_attn != "off")
        throw Error("flash_attn must be auto, on or off (got '" + p.flash_attn + "')");
    if (p.pad_rows > 64) throw Error("pad_rows must be in [0, 64] (or -1: from PPOW_PAD_ROWS)");
    params_.pad_rows = resolve_pad_rows(p.pad_rows);
    {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        g_last_error.clear();
    }

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = p.n_gpu_layers < 0 ? 999 : p.n_gpu_layers;
    // Repacked CPU weights switch kernels with the batch size (gemv for 1 row, gemm from 4), so a
    // verify batch would not reproduce single-token logits exactly; plain layouts do (see engine.h).
    // (Data generation keeps them off too: Gemma's tied lm head, the dominant cost, is never repacked,
    // and the AMX buffer type crashed llama.cpp 0.3.36 on a Sapphire Rapids Xeon.)
    mp.use_extra_bufts = false;
    model_ = llama_model_load_from_file(p.path.c_str(), mp);
    if (!model_) {
        std::string why = last_llama_error();
        throw Error("failed to load model " + p.path + (why.empty() ? "" : ": " + why));
    }
    vocab_ = llama_model_get_vocab(model_);
    n_vocab_ = llama_vocab_n_tokens(vocab_);
    capture_ = std::make_unique<FeatureCapture>(llama_model_n_layer(model_), llama_model_n_embd(model_));

    const int n_threads = p.n_threads > 0 ? p.n_threads : (int) std::max(1u, std::thread::hardware_concurrency());
    n_threads_ = n_threads;
    // llama.cpp offloads up to n_layer + 1 layers (the output layer counts) where a GPU device exists.
    gpu_layers_ = gpu_devices().empty() ? 0 : std::min(mp.n_gpu_layers, llama_model_n_layer(model_) + 1);
    // Sequence 1 only ever holds the padding rows of a decode, for the length of that decode; one
    // unified cache keeps the whole n_ctx for sequence 0. ("auto" is on for a CPU.)
    const bool flash = p.flash_attn != "off";
    flash_ = flash;
    // A GPU's rule: every decode exactly kGpuPadRows rows, so plain steps and verify batches run the
    // same kernels (measured on an H200; see Engine::judge_exactness). Asked widths (0 included) win.
    const bool gpu_invariant = p.batch_invariant && gpu_layers_ > 0 && p.n_parallel == 1;
    if (p.n_parallel > 1) pad_rows_ = 0;
    else if (params_.pad_rows >= 0) pad_rows_ = params_.pad_rows;
    else pad_rows_ = gpu_invariant ? kGpuPadRows : 0;
    fixed_width_ = params_.pad_rows > 0 || (params_.pad_rows < 0 && gpu_invariant) ? pad_rows_ : 0;
    // The CPU's rules (derived there, see kPadSingleFrom): they need every layer on the CPU.
    const bool cpu_invariant = p.batch_invariant && gpu_layers_ == 0 && p.n_parallel == 1;
    // Decided once the context exists (the use_ref switch needs it); the context's sizes assume padding.
    pad_single_ = cpu_invariant && (n_threads > 1 || !flash);
    pad_from_ = flash ? kPadSingleFrom : 0;
    float_matrices_ = has_float_matrices(p.path);
    if (cpu_invariant && float_matrices_) pad_rows_ = std::max(pad_rows_, 2);  // no one-row decode at all
    const int pad_width = std::max(pad_rows_, pad_single_ ? 2 : 0);
    llama_context_params cp = llama_context_default_params();
    // Room for the padding rows beside a full sequence 0, so padding never stops near the end.
    const int n_ctx_want = p.n_ctx > 0 ? p.n_ctx : (int) llama_model_n_ctx_train(model_);
    cp.n_ctx = n_ctx_want + pad_width;
    cp.n_batch = std::max(p.n_batch, pad_width);
    cp.n_ubatch = cp.n_batch;
    cp.n_seq_max = p.n_parallel > 1 ? p.n_parallel : pad_width > 0 ? 2 : 1;
    cp.kv_unified = true;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    cp.no_perf = true;
    cp.flash_attn_type = p.flash_attn == "on"    ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                         : p.flash_attn == "off" ? LLAMA_FLASH_ATTN_TYPE_DISABLED
                                                 : LLAMA_FLASH_ATTN_TYPE_AUTO;
    // Sliding-window models (Gemma 3) must keep the full KV so rejected draft positions can be removed.
    cp.swa_full = true;
    // The capture asks for no graph node until layers are requested, so an idle capture leaves the
    // scheduler's work as it was (logits bit-identical with and without it: tests/test_capture.py).
    cp.ctx_other = p.ctx_other;  // an eagle3 drafter borrows the target's token embeddings
    cp.cb_eval = FeatureCapture::eval_callback;
    cp.cb_eval_user_data = capture_.get();
    ctx_ = llama_init_from_model(model_, cp);
    if (!ctx_) {
        std::string why = last_llama_error();
        llama_model_free(model_);
        throw Error("failed to create a context for " + p.path + (why.empty() ? "" : ": " + why));
    }
    // Flash attention's split: the switch instead of a row (not needed where every decode has 2 rows anyway).
    if (pad_single_ && flash && n_threads > 1 && pad_rows_ < 2) {
        const CpuRefSwitch sw = find_cpu_ref_switch(ctx_);
        if (sw.set) {
            ref_backend_ = sw.backend;
            set_use_ref_ = sw.set;
            pad_single_ = false;
        }
    }
    // llama.cpp pads the context up (to 256); the caller's figure stays the limit we enforce.
    n_ctx_ = std::min((int) llama_n_ctx(ctx_), n_ctx_want);
    n_batch_ = p.n_batch;
    batch_ = llama_batch_init(std::max(n_batch_, std::max(pad_rows_, 2)) + 1, 0, 1);
}

LlamaModel::~LlamaModel() {
    llama_batch_free(batch_);
    if (ctx_) llama_free(ctx_);
    if (model_) llama_model_free(model_);
}

void LlamaModel::set_abort_flag(const volatile bool * flag) {
    llama_set_abort_callback(ctx_, abort_cb, (void *) flag);
}

double LlamaModel::decode(const llama_token * tokens, int n, int n_logits) {
    if (n <= 0) return 0.0;
    if ((int) cached_.size() + n > n_ctx_) throw Error("context full: cannot decode past n_ctx");
    llama_memory_t mem = llama_get_memory(ctx_);
    const double t0 = now_ms();
    for (int start = 0; start < n; start += n_batch_) {
        const int m = std::min(n_batch_, n - start);
        batch_.n_tokens = m;
        int outputs = 0;
        for (int i = 0; i < m; ++i) {
            const int j = start + i;
            batch_.token[i] = tokens[j];
            batch_.pos[i] = (llama_pos) (cached_.size() + i);
            batch_.n_seq_id[i] = 1;
            batch_.seq_id[i][0] = 0;
            batch_.logits[i] = j >= n - n_logits;
            outputs += batch_.logits[i];
        }
        // Throw-away rows in sequence 1 (masked out of sequence 0's attention), after the real rows:
        // a fixed width with output rows (pad_rows), or the CPU rule's one row without logits.
        const int cached = (int) cached_.size();
        int width = 0;
        bool pad_out = false;
        if (pad_rows_ > m) {
            width = pad_rows_;
            pad_out = true;
        } else if (pad_single_ && m == 1 && cached >= pad_from_) {
            width = 2;
        }
        if (width > m && cached + width <= (int) llama_n_ctx(ctx_)) {
            for (int i = m; i < width; ++i) {
                batch_.token[i] = tokens[start];
                batch_.pos[i] = i - m;
                batch_.n_seq_id[i] = 1;
                batch_.seq_id[i][0] = 1;
                batch_.logits[i] = pad_out;
            }
            batch_.n_tokens = width;
        }
        const bool pad = batch_.n_tokens > m;
        // Generation decodes (a plain step, a verify batch) on the per-row attention kernel; prompt
        // chunks keep the faster tiled one (their rows are never compared with anything).
        if (set_use_ref_) {
            const bool ref = m <= kRefRowsMax;
            if (ref != use_ref_on_) set_use_ref_(ref_backend_, ref);
            use_ref_on_ = ref;
        }
        if (capture_->active()) capture_->begin_ubatch(m, outputs);
        const int rc = llama_decode(ctx_, batch_);
        if (pad) llama_memory_seq_rm(mem, 1, -1, -1);
        if (rc == 2) {  // aborted mid-batch: forget whatever part of it reached the cache
            llama_memory_seq_rm(mem, 0, (llama_pos) cached_.size(), -1);
            throw Error("cancelled");
        }
        if (rc != 0) throw Error("llama_decode failed (code " + std::to_string(rc) + ")" +
                                 (last_llama_error().empty() ? "" : ": " + last_llama_error()));
        cached_.insert(cached_.end(), tokens + start, tokens + start + m);
        if (capture_->active()) capture_->end_ubatch();
        first_out_ = m - outputs;  // the requested rows are the chunk's last ones
    }
    llama_synchronize(ctx_);
    return now_ms() - t0;
}

const float * LlamaModel::logits(int i) const {
    // llama_get_logits_ith takes a batch index (padding rows, outputs or not, come after).
    return llama_get_logits_ith(ctx_, first_out_ + i);
}

void LlamaModel::truncate(int n) {
    if (n >= (int) cached_.size()) return;
    if (!llama_memory_seq_rm(llama_get_memory(ctx_), 0, n, -1)) {
        // Memory that cannot drop a tail (recurrent models) is rebuilt from scratch.
        llama_memory_clear(llama_get_memory(ctx_), true);
        cached_.clear();
        return;
    }
    cached_.resize(n);
}

int LlamaModel::common_prefix(const std::vector<llama_token> & tokens, int keep_last) const {
    const int limit = std::max(0, (int) tokens.size() - keep_last);
    int n = 0;
    while (n < limit && n < (int) cached_.size() && cached_[n] == tokens[n]) ++n;
    return n;
}

// A GGUF's metadata through ggml's reader, after ppow's checks; gguf_init_from_file logs why it
// refuses a file (first line: the reason, last: "failed to read ..."), which the error keeps.
static gguf_context * open_gguf_meta(const std::string & path) {
    check_gguf(path);
    install_log_capture();
    {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        g_last_error.clear();
    }
    gguf_init_params ip = {/*no_alloc*/ true, /*ctx*/ nullptr};
    gguf_context * g = gguf_init_from_file(path.c_str(), ip);
    if (!g) {
        std::string why;
        {
            std::lock_guard<std::mutex> lock(g_log_mutex);
            why = g_last_error.substr(0, g_last_error.find('\n'));
        }
        throw Error("cannot read GGUF metadata of " + path + (why.empty() ? "" : ": " + why));
    }
    return g;
}

std::vector<int32_t> gguf_int_array(const std::string & path, const char * key) {
    gguf_context * g = open_gguf_meta(path);
    std::vector<int32_t> out;
    const int64_t id = gguf_find_key(g, key);
    if (id >= 0 && gguf_get_kv_type(g, id) != GGUF_TYPE_ARRAY) {  // gguf_get_arr_* abort on a scalar
        gguf_free(g);
        throw Error(std::string("GGUF key ") + key + " in " + path + " is not an integer array");
    }
    if (id >= 0) {
        const enum gguf_type t = gguf_get_arr_type(g, id);
        const size_t n = gguf_get_arr_n(g, id);
        const void * data = gguf_get_arr_data(g, id);
        out.resize(n);
        if (t == GGUF_TYPE_INT32 || t == GGUF_TYPE_UINT32) {
            std::memcpy(out.data(), data, n * sizeof(int32_t));
        } else if (t == GGUF_TYPE_INT64 || t == GGUF_TYPE_UINT64) {
            for (size_t i = 0; i < n; ++i) out[i] = (int32_t) ((const int64_t *) data)[i];
        } else {
            gguf_free(g);
            throw Error(std::string("GGUF key ") + key + " in " + path + " is not an integer array");
        }
    }
    gguf_free(g);
    return out;
}

GgufMeta::GgufMeta(const std::string & path) : path_(path), g_(open_gguf_meta(path)) {}

GgufMeta::~GgufMeta() { gguf_free(g_); }

bool GgufMeta::has(const char * key) const { return gguf_find_key(g_, key) >= 0; }

std::string GgufMeta::str(const char * key) const {
    const int64_t id = gguf_find_key(g_, key);
    if (id < 0 || gguf_get_kv_type(g_, id) != GGUF_TYPE_STRING) return "";
    return gguf_get_val_str(g_, id);
}

int64_t GgufMeta::integer(const char * key, int64_t dflt) const {
    const int64_t id = gguf_find_key(g_, key);
    if (id < 0) return dflt;
    switch (gguf_get_kv_type(g_, id)) {
        case GGUF_TYPE_UINT8: return gguf_get_val_u8(g_, id);
        case GGUF_TYPE_INT8: return gguf_get_val_i8(g_, id);
        case GGUF_TYPE_UINT16: return gguf_get_val_u16(g_, id);
        case GGUF_TYPE_INT16: return gguf_get_val_i16(g_, id);
        case GGUF_TYPE_UINT32: return gguf_get_val_u32(g_, id);
        case GGUF_TYPE_INT32: return gguf_get_val_i32(g_, id);
        case GGUF_TYPE_UINT64: return (int64_t) gguf_get_val_u64(g_, id);
        case GGUF_TYPE_INT64: return gguf_get_val_i64(g_, id);
        case GGUF_TYPE_BOOL: return gguf_get_val_bool(g_, id);
        default: throw Error(std::string("GGUF key ") + key + " in " + path_ + " is not an integer");
    }
}

std::vector<int64_t> GgufMeta::int_tensor(const char * name) const {
    const int64_t id = gguf_find_tensor(g_, name);
    if (id < 0) return {};
    const enum ggml_type t = gguf_get_tensor_type(g_, id);
    const size_t bytes = gguf_get_tensor_size(g_, id);
    const size_t width = t == GGML_TYPE_I64 ? 8 : t == GGML_TYPE_I32 ? 4 : 0;
    if (width == 0) throw Error(std::string("tensor ") + name + " in " + path_ + " is not an integer tensor");
    std::ifstream f(path_, std::ios::binary);
    f.seekg((std::streamoff) (gguf_get_data_offset(g_) + gguf_get_tensor_offset(g_, id)));
    std::vector<char> raw(bytes);
    f.read(raw.data(), (std::streamsize) bytes);
    if (!f) throw Error(std::string("tensor ") + name + " in " + path_ + " is truncated");
    std::vector<int64_t> out(bytes / width);
    for (size_t i = 0; i < out.size(); ++i) {
        if (width == 8) std::memcpy(&out[i], raw.data() + 8 * i, 8);
        else {
            int32_t v;
            std::memcpy(&v, raw.data() + 4 * i, 4);
            out[i] = v;
        }
    }
    return out;
}

}  // namespace ppow
