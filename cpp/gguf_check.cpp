// gguf_check.cpp - a GGUF file checked against the specification before llama.cpp parses it.
//
// Layout (GGUF v2/v3, little-endian): "GGUF", u32 version, u64 tensor count, u64 key/value count,
// the key/value records, the tensor-info records, padding to the alignment, then the data section.
// The file is only read (mmap). Every count is compared with the bytes that remain before anything
// is sized by it, and every size computation is checked for overflow.
#include "gguf_check.h"

#include "model.h"  // Error

#include <ggml.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <initializer_list>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace ppow {
namespace {

// Metadata value types (the spec's gguf_metadata_value_type).
enum : uint32_t { T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64, T_COUNT };
const char * const kTypeName[T_COUNT] = {"uint8", "int8",   "uint16", "int16", "uint32", "int32",  "float32",
                                         "bool",  "string", "array",  "uint64", "int64", "float64"};
const uint64_t kTypeSize[T_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};  // 0: not fixed

// The smallest records possible: a 1-byte key with a 1-byte value; a 1-byte tensor name with no
// dimensions. They bound how many records a file of a given size can hold.
constexpr uint64_t kMinKv = 8 + 1 + 4 + 1;
constexpr uint64_t kMinTensor = 8 + 1 + 4 + 4 + 8;
// Far above any real vocabulary. llama.cpp allocates a record per token up front, placeholder
// tokens of tokenizer-less models included, so a huge count would exhaust memory.
constexpr uint64_t kMaxVocab = uint64_t(1) << 24;

// What llama.cpp 0.3.36's vocabulary loader (src/llama-vocab.cpp) knows and reads.
const char * const kTokenizers[] = {"llama", "bert",   "gpt2",  "hybriddna", "whitespace",
                                    "t5",    "rwkv",   "test",  "plamo2",    "gemma4"};
const char * const kSpecialIds[] = {"bos",     "eos",     "eot",     "eom",     "unknown", "seperator",
                                    "padding", "mask",    "fim_pre", "fim_suf", "fim_mid", "fim_pad",
                                    "fim_rep", "fim_sep", "prefix",  "suffix",  "middle"};
const char * const kRopeScalings[] = {"none", "linear", "yarn", "longrope"};
constexpr int64_t kMaxLayers = 512;    // LLAMA_MAX_LAYERS
constexpr int64_t kMaxExperts = 1024;  // LLAMA_MAX_EXPERTS
constexpr int32_t kTokenTypeMax = 6;   // llama_token_type: UNDEFINED 0 .. BYTE 6
constexpr int32_t kTokenTypeByte = 6;

// Names from the file end up in one-line messages: escape control and non-ASCII bytes, cap the length.
std::string printable(std::string_view s) {
    std::string out;
    for (unsigned char c : s.substr(0, 80)) {
        if (c >= 0x20 && c < 0x7f && c != '\'') {
            out += (char) c;
        } else {
            char b[8];
            std::snprintf(b, sizeof b, "\\x%02x", c);
            out += b;
        }
    }
    return s.size() > 80 ? out + "..." : out;
}

std::string num(uint64_t v) { return std::to_string(v); }

// llama.cpp reads names and string values through C strings: they end at the first NUL byte.
std::string_view c_str(std::string_view s) { return s.substr(0, s.find('\0')); }

template <size_t N> bool one_of(std::string_view s, const char * const (&names)[N]) {
    return std::any_of(std::begin(names), std::end(names), [&](const char * k) { return s == k; });
}

struct Kv {
    uint32_t type;  // T_ARR for arrays
    uint32_t elem;  // element type (the type itself for a scalar)
    uint64_t n;     // element count (1 for a scalar)
    uint64_t at;    // byte offset of the first element
};

std::string type_name(const Kv & kv) {
    return kv.type == T_ARR ? std::string("array of ") + kTypeName[kv.elem] : kTypeName[kv.type];
}

class MappedFile {
public:
    MappedFile(const std::string & path, std::string & err) {
        const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            err = std::string("cannot open the file (") + std::strerror(errno) + ")";
            return;
        }
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            err = "not a regular file";
        } else if (st.st_size > 0) {
            size_ = (uint64_t) st.st_size;
            void * p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) err = std::string("cannot map the file (") + std::strerror(errno) + ")";
            else data_ = (const uint8_t *) p;
        }
        close(fd);
    }
    ~MappedFile() {
        if (data_) munmap((void *) data_, size_);
    }
    MappedFile(const MappedFile &) = delete;
    MappedFile & operator=(const MappedFile &) = delete;
    const uint8_t * data() const { return data_; }
    uint64_t size() const { return size_; }

private:
    const uint8_t * data_ = nullptr;
    uint64_t size_ = 0;
};

class Checker {
public:
    Checker(const std::string & path, const uint8_t * data, uint64_t size) : path_(path), data_(data), size_(size) {}

    // A model's first (or only) file; a later file of a split model holds tensors and split.no only.
    void run(bool first) {
        header();
        key_values();
        alignment();
        tensor_infos();
        data_section();
        if (const Kv * kv = find("split.no"); kv && kv->type != T_U16)  // read with gguf_get_val_u16, which asserts
            fail("key 'split.no' must be a uint16, is " + type_name(*kv));
        if (!first) return;
        architecture();
        hparams();
        tokenizer();
    }

    // split.count of a split model (llama.cpp reads the other files when it is a uint16 above 1).
    int split_count() const {
        const Kv * kv = find("split.count");
        return kv && kv->type == T_U16 ? at<uint16_t>(kv->at) : 1;
    }

private:
    [[noreturn]] void fail(const std::string & what) const {
        throw Error("failed to load model " + path_ + ": " + what);
    }
    [[noreturn]] void fail_arch_key(const char * name, const std::string & what) const {
        fail("key '" + printable(arch_) + "." + name + "' " + what);
    }

    // Sequential reads; each checks the bytes left first. ctx_ names the record being read.
    void need(uint64_t n, const char * what) const {
        if (n > size_ - pos_)
            fail("truncated GGUF: " + ctx_ + ": its " + what + " at byte " + num(pos_) + " needs " + num(n) +
                 " bytes, the file ends at byte " + num(size_));
    }
    template <class T> T read(const char * what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, data_ + pos_, sizeof v);
        pos_ += sizeof v;
        return v;
    }
    std::string_view read_str(const char * what) {
        const uint64_t n = read<uint64_t>(what);
        need(n, what);
        std::string_view s((const char *) data_ + pos_, n);
        pos_ += n;
        return s;
    }
    // Reads at offsets validated before.
    template <class T> T at(uint64_t off) const {
        T v;
        std::memcpy(&v, data_ + off, sizeof v);
        return v;
    }
    std::string_view str_at(uint64_t & off) const {
        const uint64_t n = at<uint64_t>(off);
        std::string_view s((const char *) data_ + off + 8, n);
        off += 8 + n;
        return s;
    }
    const Kv * find(const std::string & key) const {
        auto it = kv_.find(key);
        return it == kv_.end() ? nullptr : &it->second;
    }
    // The value of an integer scalar (false for anything else); uint64 above INT64_MAX reads as INT64_MAX.
    bool int_value(const Kv & kv, int64_t & v) const {
        if (kv.type == T_ARR) return false;
        switch (kv.type) {
            case T_U8: v = at<uint8_t>(kv.at); return true;
            case T_I8: v = at<int8_t>(kv.at); return true;
            case T_U16: v = at<uint16_t>(kv.at); return true;
            case T_I16: v = at<int16_t>(kv.at); return true;
            case T_U32: v = at<uint32_t>(kv.at); return true;
            case T_I32: v = at<int32_t>(kv.at); return true;
            case T_U64: v = (int64_t) std::min<uint64_t>(at<uint64_t>(kv.at), INT64_MAX); return true;
            case T_I64: v = at<int64_t>(kv.at); return true;
            default: return false;
        }
    }

    void header() {
        ctx_ = "header";
        if (size_ < 4 || std::memcmp(data_, "GGUF", 4) != 0) fail("not a GGUF file (bad magic)");
        pos_ = 4;
        const uint32_t version = read<uint32_t>("version");
        if (version != 2 && version != 3)
            fail("GGUF version " + num(version) + " is not supported (llama.cpp reads versions 2 and 3" +
                 ((version & 0xffff) == 0 ? "; is the file big-endian?)" : ")"));
        n_tensors_ = read<uint64_t>("tensor count");
        n_kv_ = read<uint64_t>("key/value count");
        const uint64_t left = size_ - pos_;
        if (n_kv_ > left / kMinKv)
            fail("the header claims " + num(n_kv_) + " key/value records, the " + num(left) +
                 " bytes after it hold at most " + num(left / kMinKv));
        if (n_tensors_ > (left - n_kv_ * kMinKv) / kMinTensor)
            fail("the header claims " + num(n_tensors_) + " tensors and " + num(n_kv_) +
                 " key/value records, more than the " + num(left) + " bytes after it can hold");
    }

    void key_values() {
        for (uint64_t i = 0; i < n_kv_; ++i) {
            const uint64_t start = pos_;
            ctx_ = "key/value record " + num(i) + " (byte " + num(start) + ")";
            const std::string_view key = read_str("key");
            if (key.empty()) fail(ctx_ + " has an empty key");
            // found by strcmp in llama.cpp: "a\0x" would answer for "a" and escape every check of "a"
            if (c_str(key).size() != key.size()) fail(ctx_ + " has a key with a NUL byte: '" + printable(key) + "'");
            ctx_ = "key '" + printable(key) + "'";
            Kv kv{read<uint32_t>("value type"), 0, 1, 0};
            if (kv.type >= T_COUNT) fail(ctx_ + " (byte " + num(start) + ") has unknown value type " + num(kv.type));
            kv.elem = kv.type;
            if (kv.type == T_ARR) {
                const std::string at = ctx_ + " (byte " + num(start) + ")";
                kv.elem = read<uint32_t>("array element type");
                if (kv.elem >= T_COUNT) fail(at + " is an array of unknown type " + num(kv.elem));
                if (kv.elem == T_ARR) fail(at + " is an array of arrays, which llama.cpp does not read");
                kv.n = read<uint64_t>("array length");
            }
            kv.at = pos_;
            values(kv);
            if (!kv_.emplace(key, kv).second) fail(ctx_ + " appears twice (again at byte " + num(start) + ")");
        }
    }

    void values(const Kv & kv) {
        const uint64_t left = size_ - pos_;
        if (kv.elem == T_STR) {  // each string: u64 length + bytes
            if (kv.n > left / 8)
                fail("truncated GGUF: " + ctx_ + ": " + num(kv.n) + " strings at byte " + num(pos_) +
                     " need at least " + num(kv.n) + " x 8 bytes, " + num(left) + " remain");
            for (uint64_t j = 0; j < kv.n; ++j) read_str("string");
            return;
        }
        const uint64_t w = kTypeSize[kv.elem];
        if (kv.n > left / w)
            fail("truncated GGUF: " + ctx_ + ": " + num(kv.n) + " " + kTypeName[kv.elem] + " values at byte " +
                 num(pos_) + " need " + num(kv.n) + " x " + num(w) + " bytes, " + num(left) + " remain");
        if (kv.elem == T_BOOL)
            for (uint64_t j = 0; j < kv.n; ++j)
                if (data_[pos_ + j] > 1)
                    fail(ctx_ + ": bool at byte " + num(pos_ + j) + " is " + num(data_[pos_ + j]) + ", not 0 or 1");
        pos_ += kv.n * w;
    }

    void alignment() {
        const Kv * kv = find("general.alignment");
        if (!kv) return;
        if (kv->type != T_U32) fail("key 'general.alignment' must be a uint32, is " + type_name(*kv));
        alignment_ = at<uint32_t>(kv->at);
        if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0)
            fail("key 'general.alignment' is " + num(alignment_) + ", not a power of two");
    }

    void tensor_infos() {
        std::unordered_set<std::string_view> names;
        for (uint64_t i = 0; i < n_tensors_; ++i) {
            const uint64_t start = pos_;
            ctx_ = "tensor record " + num(i) + " (byte " + num(start) + ")";
            const std::string_view name = read_str("name");
            if (name.empty() || name.size() >= GGML_MAX_NAME)
                fail(ctx_ + " has a name of " + num(name.size()) + " bytes (1 to " + num(GGML_MAX_NAME - 1) +
                     " allowed)");
            ctx_ = "tensor '" + printable(name) + "'";
            if (c_str(name).size() != name.size()) fail(ctx_ + " has a NUL byte in its name");
            if (!names.insert(name).second) fail(ctx_ + " appears twice (again at byte " + num(start) + ")");
            const uint32_t n_dims = read<uint32_t>("dimension count");
            if (n_dims > GGML_MAX_DIMS)
                fail(ctx_ + " has " + num(n_dims) + " dimensions (at most " + num(GGML_MAX_DIMS) + ")");
            int64_t ne[GGML_MAX_DIMS] = {1, 1, 1, 1};
            std::string shape;
            for (uint32_t d = 0; d < n_dims; ++d) {
                const uint64_t v = read<uint64_t>("dimension");
                if (v > (uint64_t) INT64_MAX) fail(ctx_ + ": dimension " + num(d) + " is negative");
                ne[d] = (int64_t) v;
                shape += (d ? ", " : "") + num(v);
            }
            int64_t n_elem = 1;  // ggml counts elements in int64
            for (int64_t v : ne) {
                if (v != 0 && n_elem > INT64_MAX / v)
                    fail(ctx_ + ": shape [" + shape + "] has more than 2^63 elements");
                n_elem *= v;
            }
            const uint32_t type = read<uint32_t>("type");
            // ggml's own type table: removed types have block size 0.
            if (type >= GGML_TYPE_COUNT || ggml_blck_size((ggml_type) type) <= 0)
                fail(ctx_ + " has unknown ggml type " + num(type));
            const int64_t blck = ggml_blck_size((ggml_type) type);
            const uint64_t type_size = ggml_type_size((ggml_type) type);
            if (ne[0] % blck != 0)
                fail(ctx_ + ": rows of " + num(ne[0]) + " elements are not a multiple of the " +
                     ggml_type_name((ggml_type) type) + " block size " + num(blck));
            const uint64_t n_blocks = (uint64_t) n_elem / blck;
            if (type_size && n_blocks > UINT64_MAX / type_size)
                fail(ctx_ + ": shape [" + shape + "] overflows its size in bytes");
            tensor_type(name, n_dims, (ggml_type) type);
            const uint64_t offset = read<uint64_t>("data offset");
            if (offset % alignment_ != 0)
                fail(ctx_ + ": data offset " + num(offset) + " is not a multiple of the alignment " + num(alignment_));
            tensors_.push_back({name, offset, n_blocks * type_size});
        }
    }

    // llama.cpp takes any ggml type for any tensor, but its CPU kernels do not: ggml's matmul has no
    // kernel for the activation-side and integer types (a weight of one calls a null pointer), and
    // the element-wise ops 1-D tensors (norms, biases) enter take only f32 beside f32 activations
    // (an abort otherwise). eagle3's d2t map is the one integer tensor, and its graph asserts I64.
    void tensor_type(std::string_view name, uint32_t n_dims, ggml_type t) const {
        const bool matmul = t != GGML_TYPE_Q8_1 && t != GGML_TYPE_Q8_K && t != GGML_TYPE_I8 && t != GGML_TYPE_I16 &&
                            t != GGML_TYPE_I32 && t != GGML_TYPE_I64 && t != GGML_TYPE_F64;
        const char * need = name == "d2t" ? (t == GGML_TYPE_I64 && n_dims == 1 ? nullptr : "a 1-D i64 map")
                            : n_dims <= 1 ? (t == GGML_TYPE_F32 ? nullptr : "f32, as a 1-D tensor (norm or bias)")
                            : matmul      ? nullptr
                                          : "a float or quantized type llama.cpp multiplies with";
        if (need) fail(ctx_ + " has type " + ggml_type_name(t) + ", not " + need);
    }

    void data_section() {
        if (tensors_.empty()) return;
        // The data section starts at the first multiple of the alignment after the tensor records
        // (pos_ <= file size < 2^63 and alignment < 2^32: no overflow).
        const uint64_t start = (pos_ + alignment_ - 1) / alignment_ * alignment_;
        if (start > size_)
            fail("truncated GGUF: the data section would start at byte " + num(start) + ", the file ends at byte " +
                 num(size_));
        const uint64_t avail = size_ - start;
        for (const Tensor & t : tensors_)
            if (t.offset > avail || t.nbytes > avail - t.offset)
                fail("truncated GGUF: tensor '" + printable(t.name) + "' needs " + num(t.nbytes) + " bytes at offset " +
                     num(t.offset) + " of the data section (byte " + num(start) + " on), the file ends at byte " +
                     num(size_));
        std::vector<const Tensor *> order;
        for (const Tensor & t : tensors_) order.push_back(&t);
        std::sort(order.begin(), order.end(), [](const Tensor * a, const Tensor * b) { return a->offset < b->offset; });
        for (size_t i = 1; i < order.size(); ++i)
            if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset)
                fail("tensors '" + printable(order[i - 1]->name) + "' and '" + printable(order[i]->name) +
                     "' overlap in the data section");
    }

    void architecture() {
        const Kv * kv = find("general.architecture");
        if (!kv) fail("key 'general.architecture' is missing");
        if (kv->type != T_STR) fail("key 'general.architecture' must be a string, is " + type_name(*kv));
        uint64_t off = kv->at;
        arch_ = std::string(c_str(str_at(off)));
    }

    // Standard <arch>.* keys that llama.cpp's hyperparameter loader or ggml's kernels assert on (an
    // abort) rather than refusing with an error: layer and expert counts, norm epsilons, RoPE scaling.
    void hparams() {
        auto value = [&](const char * name, int64_t & v) {
            const Kv * kv = find(arch_ + "." + name);
            return kv && int_value(*kv, v);
        };
        auto bad = [&](const char * name, int64_t v, const std::string & why) {
            fail_arch_key(name, "is " + std::to_string(v) + " (" + why + ")");
        };
        int64_t n_layer = 0, v = 0;
        if (value("block_count", n_layer) && (n_layer < 1 || n_layer > kMaxLayers))
            bad("block_count", n_layer, "1 to " + num(kMaxLayers) + " accepted");
        if (value("nextn_predict_layers", v) && (v < 0 || v > n_layer))
            bad("nextn_predict_layers", v, "more than the layers");
        int64_t n_expert = 0, groups = 0, group_used = 0, used = 0;
        value("expert_count", n_expert);
        value("expert_group_count", groups);
        value("expert_group_used_count", group_used);
        if (const Kv * kv = find(arch_ + ".expert_used_count")) {  // one count, or one per layer
            if (kv->type == T_ARR && (kv->elem == T_U32 || kv->elem == T_I32))
                for (uint64_t i = 0; i < kv->n; ++i) used = std::max<int64_t>(used, at<uint32_t>(kv->at + 4 * i));
            else
                int_value(*kv, used);
        }
        if (n_expert < 0 || n_expert > kMaxExperts)
            bad("expert_count", n_expert, "0 to " + num(kMaxExperts) + " accepted");
        if (used < 0 || used > n_expert || (n_expert > 0 && used == 0))
            bad("expert_used_count", used, "1 to expert_count with experts, 0 without");
        if (groups < 0 || (n_expert > 0 ? groups >= n_expert : groups != 0))
            bad("expert_group_count", groups, "below expert_count with experts, 0 without");
        if (groups > 1 && (n_expert % groups != 0 || group_used <= 0 || group_used >= groups))
            bad("expert_group_used_count", group_used, "expert groups must divide the experts, and 0 < used < groups");
        for (const char * name : {"attention.layer_norm_epsilon", "attention.layer_norm_rms_epsilon",
                                  "attention.group_norm_epsilon"}) {
            // ggml's norm kernels assert eps >= 0 when the graph first runs
            const Kv * kv = find(arch_ + "." + name);
            double eps = 0.0;
            if (kv && kv->type == T_F32) eps = at<float>(kv->at);
            if (kv && kv->type == T_F64) eps = at<double>(kv->at);
            if (!(eps >= 0.0 && eps < 1e30))
                fail_arch_key(name, "is " + std::to_string(eps) + " (a norm epsilon must be a finite number >= 0)");
        }
        if (const Kv * kv = find(arch_ + ".rope.scaling.type")) {
            uint64_t off = kv->at;
            const std::string_view s = kv->type == T_STR ? c_str(str_at(off)) : std::string_view();
            if (kv->type == T_STR && !one_of(s, kRopeScalings))
                fail_arch_key("rope.scaling.type", "is '" + printable(s) + "', which llama.cpp does not know");
        }
    }

    // llama.cpp builds the vocabulary from tokenizer.ggml.*; several malformed values abort there.
    void tokenizer() {
        const Kv * model = find("tokenizer.ggml.model");
        if (!model) fail("key 'tokenizer.ggml.model' is missing (llama.cpp builds the vocabulary from it)");
        if (model->type != T_STR) fail("key 'tokenizer.ggml.model' must be a string, is " + type_name(*model));
        uint64_t off = model->at;
        const std::string_view name = c_str(str_at(off));
        if (name == "none" || name == "no_vocab") {
            // No vocabulary (eagle3 and ppow's reduced-vocabulary drafters): llama.cpp makes
            // <arch>.vocab_size placeholder tokens.
            const Kv * vs = find(arch_ + ".vocab_size");
            int64_t v = 0;
            if (vs && int_value(*vs, v) && (v < 0 || (uint64_t) v > kMaxVocab))
                fail_arch_key("vocab_size", "is " + std::to_string(v) + " (0 to " + num(kMaxVocab) + " accepted)");
            return;
        }
        if (!one_of(name, kTokenizers))
            fail("key 'tokenizer.ggml.model' is '" + printable(name) + "', a tokenizer llama.cpp does not know");

        const Kv * tokens = find("tokenizer.ggml.tokens");
        if (!tokens) fail("key 'tokenizer.ggml.tokens' is missing (the '" + printable(name) + "' tokenizer needs it)");
        if (tokens->type != T_ARR || tokens->elem != T_STR)
            fail("key 'tokenizer.ggml.tokens' must be an array of strings, is " + type_name(*tokens));
        const uint64_t n = tokens->n;
        if (n == 0 || n > kMaxVocab)
            fail("key 'tokenizer.ggml.tokens' has " + num(n) + " tokens (1 to " + num(kMaxVocab) + " accepted)");
        unique_tokens(*tokens);

        same_length("tokenizer.ggml.scores", {T_F32, T_I32}, n);
        if (const Kv * types = same_length("tokenizer.ggml.token_type", {T_I32}, n)) {
            for (uint64_t i = 0; i < n; ++i) {
                const int32_t t = at<int32_t>(types->at + 4 * i);
                if (t < 0 || t > kTokenTypeMax)
                    fail("key 'tokenizer.ggml.token_type': token " + num(i) + " has unknown type " + std::to_string(t));
                if (t == kTokenTypeByte && name == "bert")  // llama.cpp aborts spelling a WordPiece byte token
                    fail("key 'tokenizer.ggml.token_type': token " + num(i) +
                         " is a byte token, which a 'bert' vocabulary cannot have");
            }
        }
        if (const Kv * merges = find("tokenizer.ggml.merges"))
            if (merges->type != T_ARR || merges->elem != T_STR)
                fail("key 'tokenizer.ggml.merges' must be an array of strings, is " + type_name(*merges));
        for (const char * s : kSpecialIds) {
            const std::string key = std::string("tokenizer.ggml.") + s + "_token_id";
            const Kv * kv = find(key);
            if (!kv) continue;
            int64_t v = 0;
            if (!int_value(*kv, v)) fail("key '" + key + "' must be an integer, is " + type_name(*kv));
            if (v < 0 || (uint64_t) v >= n)
                fail("key '" + key + "' is " + std::to_string(v) + ", outside the vocabulary of " + num(n) + " tokens");
        }
    }

    // llama.cpp maps every token string to its id and asserts the map is as large as the list, so
    // two equal strings abort the load. It reads them up to a NUL, and renames empty ones "[EMPTY_<id>]".
    void unique_tokens(const Kv & tokens) {
        std::unordered_set<std::string_view> seen;
        seen.reserve(tokens.n);
        std::deque<std::string> renamed;
        uint64_t off = tokens.at;
        for (uint64_t i = 0; i < tokens.n; ++i) {
            std::string_view s = c_str(str_at(off));
            if (s.empty()) {
                renamed.push_back("[EMPTY_" + num(i) + "]");
                s = renamed.back();
            }
            if (!seen.insert(s).second)
                fail("key 'tokenizer.ggml.tokens': token " + num(i) + " '" + printable(s) +
                     "' appears twice (llama.cpp needs distinct token strings)");
        }
    }

    // An optional per-token array: of one of `types` and exactly one entry per token.
    const Kv * same_length(const char * key, std::initializer_list<uint32_t> types, uint64_t n) const {
        const Kv * kv = find(key);
        if (!kv) return nullptr;
        if (kv->type != T_ARR || std::find(types.begin(), types.end(), kv->elem) == types.end())
            fail(std::string("key '") + key + "' has the wrong type (" + type_name(*kv) + ")");
        if (kv->n != n)
            fail(std::string("key '") + key + "' has " + num(kv->n) + " entries for " + num(n) + " tokens");
        return kv;
    }

    struct Tensor {
        std::string_view name;
        uint64_t offset, nbytes;
    };
    const std::string & path_;
    const uint8_t * data_;
    uint64_t size_, pos_ = 0;
    std::string ctx_, arch_;
    uint64_t n_tensors_ = 0, n_kv_ = 0, alignment_ = 32;  // GGUF's default alignment
    std::unordered_map<std::string_view, Kv> kv_;
    std::vector<Tensor> tensors_;
};

}  // namespace

static int check_file(const std::string & path, bool first) {
    std::string err;
    MappedFile f(path, err);
    if (!err.empty()) throw Error("failed to load model " + path + ": " + err);
    Checker c(path, f.data(), f.size());
    c.run(first);
    return c.split_count();
}

void check_gguf(const std::string & path) {
    const int n_split = check_file(path, true);
    if (n_split <= 1) return;
    // llama.cpp then opens <prefix>-0000i-of-0000n.gguf itself: check those files the same way.
    std::vector<char> prefix(path.size() + 1), part(path.size() + 64);
    if (llama_split_prefix(prefix.data(), prefix.size(), path.c_str(), 0, n_split) == 0)
        return;  // not named like a split: llama.cpp refuses it itself
    for (int i = 1; i < n_split; ++i) {
        llama_split_path(part.data(), part.size(), prefix.data(), i, n_split);
        check_file(part.data(), false);
    }
}

void require_vocabulary(const llama_vocab * vocab, const std::string & path, const char * role) {
    if (llama_vocab_type(vocab) == LLAMA_VOCAB_TYPE_NONE)
        throw Error(std::string(role) + " " + path + " has no vocabulary of its own (tokenizer.ggml.model is 'none', "
                    "as in a drafter GGUF): ppow needs one to tokenize and spell tokens");
}

}  // namespace ppow
