// bindings.cpp - ppow._core: the engine for Python. Decoding runs with the GIL released.
#include "datagen.h"
#include "engine.h"
#include "gguf_check.h"

#include <ggml-backend.h>
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

namespace nb = nanobind;
using namespace nb::literals;
using namespace ppow;

#ifndef PPOW_LLAMA_VERSION
#define PPOW_LLAMA_VERSION "unknown"
#endif
#ifndef PPOW_VERSION
#define PPOW_VERSION "dev"
#endif

static nb::dict build_info() {
    nb::dict d;
    d["ppow_version"] = PPOW_VERSION;
    d["llama_cpp_version"] = PPOW_LLAMA_VERSION;  // llama.cpp's own version as its CMake package reports it
    nb::list regs, devs;
    for (size_t i = 0; i < ggml_backend_reg_count(); ++i) regs.append(ggml_backend_reg_name(ggml_backend_reg_get(i)));
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        devs.append(std::string(ggml_backend_dev_name(dev)) + ": " + ggml_backend_dev_description(dev));
    }
    d["backends"] = regs;
    d["devices"] = devs;
    d["gpu_offload"] = llama_supports_gpu_offload();
    d["system_info"] = std::string(llama_print_system_info());
    return d;
}

static nb::dict stats_dict(const Stats & s) {
    nb::dict d;
    d["prompt_tokens"] = s.n_prompt;
    d["prompt_tokens_reused"] = s.n_prompt_reused;
    d["t_prompt_ms"] = s.t_prompt_ms;
    d["n_generated"] = s.n_generated;
    d["n_steps"] = s.n_steps;
    d["n_drafted"] = s.n_drafted;
    d["n_accepted"] = s.n_accepted;
    d["n_plain_steps"] = s.n_plain_steps;
    d["n_probe_steps"] = s.n_probe_steps;
    d["n_lookup_steps"] = s.n_lookup_steps;
    d["n_lookup_drafted"] = s.n_lookup_drafted;
    d["n_lookup_accepted"] = s.n_lookup_accepted;
    d["n_lookup_shadow"] = s.n_lookup_shadow;
    d["drafted_at"] = s.drafted_at;
    d["accepted_at"] = s.accepted_at;
    d["t_draft_ms"] = s.t_draft_ms;
    d["t_draft_forward_ms"] = s.t_draft_fwd_ms;
    d["t_draft_catchup_ms"] = s.t_catchup_ms;
    d["n_draft_catchup"] = s.n_catchup;
    d["t_verify_ms"] = s.t_verify_ms;
    d["t_sample_ms"] = s.t_sample_ms;
    d["t_calibrate_ms"] = s.t_calibrate_ms;
    d["n_calibrations"] = s.n_calibrations;
    d["n_capture_steps"] = s.n_capture_steps;
    d["t_total_ms"] = s.t_total_ms;
    d["stop_reason"] = s.stop_reason;
    d["exact"] = s.exact;
    d["exact_reason"] = s.exact_reason;
    return d;
}

// Where an engine's models run and whether its speculative output is exact there.
static nb::dict backend_dict(Engine & e) {
    nb::dict d;
    LlamaModel & t = e.target();
    d["gpu_devices"] = LlamaModel::gpu_devices();
    d["n_gpu_layers"] = t.params().n_gpu_layers;
    d["gpu_layers"] = t.gpu_layers();
    d["n_layer"] = t.n_layer();
    d["n_threads"] = t.n_threads();
    d["flash_attn"] = t.params().flash_attn;
    d["batch_invariant"] = t.params().batch_invariant;
    d["pads_single"] = t.pads_single();
    d["ref_attention"] = t.ref_attention();
    d["pad_rows"] = t.pad_rows();
    d["float_matrices"] = t.float_matrices();
    d["verify_batch_max"] = e.verify_batch_max();
    if (LlamaModel * dm = e.drafter_model()) {
        d["drafter_n_gpu_layers"] = dm->params().n_gpu_layers;
        d["drafter_gpu_layers"] = dm->gpu_layers();
        d["drafter_n_threads"] = dm->n_threads();
    }
    d["exact"] = e.exactness().exact;
    d["exact_reason"] = e.exactness().reason;
    return d;
}

// A numpy array that owns `v` (moved in).
template <typename T>
static nb::ndarray<nb::numpy, T> owned_array(std::vector<T> && v, std::initializer_list<size_t> shape) {
    auto * held = new std::vector<T>(std::move(v));
    nb::capsule owner(held, [](void * p) noexcept { delete static_cast<std::vector<T> *>(p); });
    return nb::ndarray<nb::numpy, T>(held->data(), shape.size(), shape.begin(), owner);
}

// Data generation: a target loaded for n_parallel sequences, whose finished sequences are handed to
// Python (with the GIL) as dicts of numpy arrays while the decoding runs without it.
struct DataGen {
    LlamaModel model;
    volatile bool cancel_flag = false;
    explicit DataGen(const ModelParams & mp) : model(mp) {
        require_vocabulary(model.vocab(), model.path(), "target");
        model.set_abort_flag(&cancel_flag);
    }
};

static nb::dict record_dict(SeqRecord && r, int K, int L, int H) {
    const size_t N = r.tokens.size();
    nb::dict d;
    d["index"] = r.index;
    d["prompt_len"] = r.prompt_len;
    d["stop"] = r.stop;
    d["tokens"] = owned_array(std::move(r.tokens), {N});
    d["greedy"] = owned_array(std::move(r.greedy), {N});
    d["next"] = owned_array(std::move(r.next), {N});
    d["scored"] = owned_array(std::move(r.scored), {N});
    d["topk_ids"] = owned_array(std::move(r.topk_ids), {N, (size_t) K});
    d["topk_probs"] = owned_array(std::move(r.topk_probs), {N, (size_t) K});
    d["hidden_bf16"] = owned_array(std::move(r.hidden), {N, (size_t) L, (size_t) H});
    return d;
}

NB_MODULE(_core, m) {
    m.doc() = "ppow engine: speculative decoding over llama.cpp";
    nb::exception<Error>(m, "EngineError", PyExc_RuntimeError);
    // Prompt lookup's draft on its own (unit tests of the occurrence it picks).
    m.def(
        "lookup_draft",
        [](const std::vector<llama_token> & hist, int n_max) {
            const LookupDraft d = lookup_draft(hist, n_max);
            return nb::make_tuple(d.tokens, d.ngram, d.match, lookup_key(d.match));
        },
        "hist"_a, "n_max"_a, "Prompt lookup's draft for a history: (tokens, ngram, match length, key)");
    m.def("build_info", &build_info, "llama.cpp build this module links: backends, devices, CPU features");

    nb::class_<ModelParams>(m, "ModelParams")
        .def(nb::init<>())
        .def_rw("path", &ModelParams::path)
        .def_rw("n_gpu_layers", &ModelParams::n_gpu_layers)
        .def_rw("n_ctx", &ModelParams::n_ctx)
        .def_rw("n_batch", &ModelParams::n_batch)
        .def_rw("n_threads", &ModelParams::n_threads)
        .def_rw("batch_invariant", &ModelParams::batch_invariant)
        .def_rw("flash_attn", &ModelParams::flash_attn)
        .def_rw("n_parallel", &ModelParams::n_parallel)
        .def_rw("pad_rows", &ModelParams::pad_rows)
        .def_rw("kind", &ModelParams::kind);

    nb::class_<DataGenParams>(m, "DataGenParams")
        .def(nb::init<>())
        .def_rw("max_new", &DataGenParams::max_new)
        .def_rw("topk", &DataGenParams::topk)
        .def_rw("temp", &DataGenParams::temp)
        .def_rw("seed", &DataGenParams::seed)
        .def_rw("stop_at_eog", &DataGenParams::stop_at_eog)
        .def_rw("host_threads", &DataGenParams::host_threads)
        .def_rw("device_topk", &DataGenParams::device_topk)
        .def_rw("layers", &DataGenParams::layers);

    nb::class_<DataGen>(m, "DataGen")
        .def(nb::init<const ModelParams &>(), "target"_a, nb::call_guard<nb::gil_scoped_release>())
        .def(
            "run",
            [](DataGen & g, const std::vector<std::vector<llama_token>> & prompts, const DataGenParams & p,
               int ctx_per_seq, nb::object on_done, const std::vector<int64_t> & indices) {
                const int K = p.topk, L = (int) p.layers.size(), H = g.model.n_embd();
                g.cancel_flag = false;
                DataGenStats st;
                {
                    nb::gil_scoped_release nogil;
                    st = DataGenerator(g.model).run(prompts, indices, p, ctx_per_seq, [&](SeqRecord && r) {
                        nb::gil_scoped_acquire gil;
                        on_done(record_dict(std::move(r), K, L, H));  // a Python exception propagates
                    }, &g.cancel_flag);
                }
                nb::dict d;
                d["sequences"] = st.sequences;
                d["positions"] = st.positions;
                d["new_tokens"] = st.new_tokens;
                d["decodes"] = st.decodes;
                d["rows"] = st.rows;
                d["device_rows"] = st.device_rows;
                d["t_decode_ms"] = st.t_decode_ms;
                d["t_host_ms"] = st.t_host_ms;
                d["t_total_ms"] = st.t_total_ms;
                return d;
            },
            "prompts"_a, "params"_a, "ctx_per_seq"_a, "on_done"_a, "indices"_a = std::vector<int64_t>())
        .def("cancel", [](DataGen & g) { g.cancel_flag = true; })
        .def_prop_ro("n_layer", [](DataGen & g) { return g.model.n_layer(); })
        .def_prop_ro("n_embd", [](DataGen & g) { return g.model.n_embd(); })
        .def_prop_ro("n_vocab", [](DataGen & g) { return g.model.n_vocab(); })
        .def_prop_ro("n_ctx", [](DataGen & g) { return g.model.n_ctx(); })
        .def_prop_ro("n_parallel", [](DataGen & g) { return (int) llama_n_seq_max(g.model.ctx()); })
        .def_prop_ro("gpu_layers", [](DataGen & g) { return g.model.gpu_layers(); })
        .def_prop_ro("bos", [](DataGen & g) { return llama_vocab_bos(g.model.vocab()); })
        .def(
            "tokenize",
            [](DataGen & g, const std::string & text, bool add_special) {
                std::vector<llama_token> out(text.size() + 8);
                int n = llama_tokenize(g.model.vocab(), text.data(), (int) text.size(), out.data(), (int) out.size(),
                                       add_special, false);
                if (n < 0) {
                    out.resize(-n);
                    n = llama_tokenize(g.model.vocab(), text.data(), (int) text.size(), out.data(), -n, add_special, false);
                }
                out.resize(std::max(n, 0));
                return out;
            },
            "text"_a, "add_special"_a = true);

    // The auto policy's cost model on its own, with timings from Python: unit tests of calibration
    // (warm-up, medians) and drift.
    nb::class_<CostModel>(m, "CostModel")
        .def(nb::init<>())
        .def("calibrate",
             [](CostModel & c, const std::vector<int> & sizes, nb::callable measure, nb::object draft_step,
                nb::object catchup) {
                 std::function<double()> step, cu;
                 if (!draft_step.is_none()) step = [draft_step] { return nb::cast<double>(draft_step()); };
                 if (!catchup.is_none()) cu = [catchup] { return nb::cast<double>(catchup()); };
                 c.calibrate(sizes, [measure](int n) { return nb::cast<double>(measure(n)); }, step, cu);
             },
             "sizes"_a, "measure"_a, "draft_step"_a = nb::none(), "catchup"_a = nb::none())
        .def("observe_verify", &CostModel::observe_verify, "n"_a, "ms"_a)
        .def("observe_draft_token", &CostModel::observe_draft_token, "ms"_a)
        .def("observe_catchup", &CostModel::observe_catchup, "ms"_a)
        .def("verify_ms", &CostModel::verify_ms, "n"_a)
        .def_prop_ro("draft_ms", &CostModel::draft_ms)
        .def_prop_ro("catchup_ms", &CostModel::catchup_ms)
        .def_prop_ro("calibrated", &CostModel::calibrated)
        .def_prop_ro("drifted", &CostModel::drifted)
        .def_prop_ro("n_calibrations", &CostModel::n_calibrations)
        .def("begin_generation", &CostModel::begin_generation)
        .def("observe_lookup", &CostModel::observe_lookup, "key"_a, "pos"_a, "accepted"_a)
        .def("decay_lookup", &CostModel::decay_lookup, "keep"_a)
        .def("best_lookup_window",
             [](const CostModel & c, int key, int n_avail) {
                 double gain = 0.0;
                 const int k = c.best_lookup_window(key, n_avail, &gain);
                 return nb::make_tuple(k, gain);
             },
             "key"_a, "n_avail"_a)
        .def("to_json", &CostModel::to_json);

    nb::enum_<DraftPolicy>(m, "DraftPolicy").value("fixed", DraftPolicy::Fixed).value("auto", DraftPolicy::Auto);

    nb::class_<GenParams>(m, "GenParams")
        .def(nb::init<>())
        .def_rw("n_predict", &GenParams::n_predict)
        .def_prop_rw("temp", [](GenParams & g) { return g.sampling.temp; }, [](GenParams & g, float v) { g.sampling.temp = v; })
        .def_prop_rw("top_k", [](GenParams & g) { return g.sampling.top_k; }, [](GenParams & g, int v) { g.sampling.top_k = v; })
        .def_prop_rw("top_p", [](GenParams & g) { return g.sampling.top_p; }, [](GenParams & g, float v) { g.sampling.top_p = v; })
        .def_prop_rw("seed", [](GenParams & g) { return g.sampling.seed; }, [](GenParams & g, uint64_t v) { g.sampling.seed = v; })
        .def_rw("draft_max", &GenParams::draft_max)
        .def_rw("draft_min", &GenParams::draft_min)
        .def_rw("draft_p_min", &GenParams::draft_p_min)
        .def_rw("policy", &GenParams::policy)
        .def_rw("use_drafter", &GenParams::use_drafter)
        .def_rw("lookup", &GenParams::lookup)
        .def_rw("ignore_eos", &GenParams::ignore_eos)
        .def_rw("stop", &GenParams::stop);

    nb::class_<Engine>(m, "Engine")
        .def(nb::init<const ModelParams &, const std::optional<ModelParams> &>(), "target"_a, "drafter"_a = nb::none(),
             nb::call_guard<nb::gil_scoped_release>())
        .def(
            "generate",
            [](Engine & e, const std::vector<llama_token> & prompt, const GenParams & gp, nb::object on_text) {
                TextCallback cb;
                if (!on_text.is_none())
                    cb = [on_text](const std::string & s) {
                        nb::gil_scoped_acquire gil;
                        on_text(nb::bytes(s.data(), s.size()));
                    };
                Result r;
                {
                    nb::gil_scoped_release nogil;
                    r = e.generate(prompt, gp, cb);
                }
                nb::dict d;
                d["tokens"] = r.tokens;
                d["text"] = nb::bytes(r.text.data(), r.text.size());
                d["stats"] = stats_dict(r.stats);
                return d;
            },
            "prompt"_a, "params"_a, "on_text"_a = nb::none())
        .def(
            "score",
            [](Engine & e, const std::vector<llama_token> & tokens, int n_last) {
                std::vector<float> scored;
                {
                    nb::gil_scoped_release nogil;
                    scored = e.score(tokens, n_last);
                }
                auto * rows = new std::vector<float>(std::move(scored));  // owned by the array below
                nb::capsule owner(rows, [](void * p) noexcept { delete static_cast<std::vector<float> *>(p); });
                return nb::ndarray<nb::numpy, float, nb::ndim<2>>(rows->data(), {(size_t) n_last, (size_t) e.n_vocab()},
                                                                  owner);
            },
            "tokens"_a, "n_last"_a = 1)
        .def(
            "score_features",
            [](Engine & e, const std::vector<llama_token> & tokens, int n_last, const std::vector<int> & layers) {
                std::vector<float> logits, feats;
                {
                    nb::gil_scoped_release nogil;
                    logits = e.score_features(tokens, n_last, layers, feats);
                }
                const size_t T = tokens.size();
                return nb::make_tuple(owned_array(std::move(logits), {(size_t) n_last, (size_t) e.n_vocab()}),
                                      owned_array(std::move(feats), {layers.size(), T, (size_t) e.n_embd()}));
            },
            "tokens"_a, "n_last"_a, "layers"_a)
        .def(
            "draft_window",
            [](Engine & e, const std::vector<llama_token> & tokens, int k) {
                std::vector<float> logits;
                std::vector<llama_token> drafted;
                {
                    nb::gil_scoped_release nogil;
                    drafted = e.draft_window(tokens, k, logits);
                }
                const size_t rows = drafted.empty() ? 0 : logits.size() / std::max<size_t>(1, drafted.size());
                const size_t n = drafted.size();
                return nb::make_tuple(drafted, owned_array(std::move(logits), {n, rows}));
            },
            "tokens"_a, "k"_a)
        .def("cancel", &Engine::cancel, "Stop the running generate() at its next step (thread-safe)")
        .def("tokenize", &Engine::tokenize, "text"_a, "add_special"_a = true, "parse_special"_a = false)
        .def("detokenize", [](Engine & e, const std::vector<llama_token> & t) {
            std::string s = e.detokenize(t);
            return nb::bytes(s.data(), s.size());
        })
        .def("calibrate", &Engine::calibrate, "k_max"_a, nb::call_guard<nb::gil_scoped_release>())
        .def("cost_profile", [](Engine & e) { return e.costs().to_json(); })
        .def_prop_rw("verify_batch_max", &Engine::verify_batch_max, &Engine::set_verify_batch_max)
        .def_prop_ro("backend", &backend_dict)
        .def_prop_ro("n_vocab", &Engine::n_vocab)
        .def_prop_ro("n_ctx", &Engine::n_ctx)
        .def_prop_ro("n_layer", &Engine::n_layer)
        .def_prop_ro("n_embd", &Engine::n_embd)
        .def_prop_ro("has_drafter", &Engine::has_drafter)
        .def_prop_ro("drafter_kind", [](Engine & e) { return e.has_drafter() ? std::string(e.drafter()->kind()) : std::string(); })
        .def_prop_ro("bos", &Engine::bos)
        .def_prop_ro("add_bos", &Engine::add_bos);
}
