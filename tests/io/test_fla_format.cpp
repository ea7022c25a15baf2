// fla's RetNet format: its configuration, its tensors, and its semantics, checked against a direct double
// implementation of fla's forward pass written here from fla's definitions (half-split rotary pairs, grouped heads
// repeated per group, q·k scaled by dk^-½, no normalisers, weighted group norm times swish(g), SwiGLU with
// gate/up/down), independent of the model code and of the loader's row reordering.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "retnet/infer/generate.hpp"
#include "retnet/io/fla_format.hpp"
#include "retnet/retnet.hpp"
#include "test_util.hpp"

using namespace retnet;
using retnet::test::error_of;
using retnet::test::temp_path;
using json = nlohmann::json;

namespace {

bool has(const std::string& err, const std::string& what) {
  if (err.find(what) != std::string::npos) return true;
  UNSCOPED_INFO("message: " << err);
  return false;
}

// A small fla configuration; the variants cover grouped heads, a key width other than hidden_size, odd sizes,
// tied embeddings and fuse_norm = false (the g_norm name).
json small_config(const std::string& variant) {
  json j = {{"model_type", "retnet"},
            {"hidden_size", 12},
            {"num_hidden_layers", 2},
            {"num_heads", 2},
            {"expand_k", 1},
            {"expand_v", 2},
            {"hidden_ratio", 2},
            {"intermediate_size", 20},
            {"vocab_size", 13},
            {"norm_eps", 1e-5},
            {"hidden_act", "swish"},
            {"tie_word_embeddings", false},
            {"elementwise_affine", true},
            {"use_short_conv", false},
            {"feature_map", nullptr},
            {"attn", nullptr}};
  if (variant == "grouped") {
    j["hidden_size"] = 16;
    j["num_heads"] = 4;
    j["num_kv_heads"] = 2;
    j["expand_k"] = 1.5;   // key width 24, dk 6
    j["expand_v"] = 1.25;  // value width 20, dv 5
    j["intermediate_size"] = 19;
  }
  if (variant == "tied") {
    j["tie_word_embeddings"] = true;
    j["fuse_norm"] = false;
    j["num_heads"] = 3;
    j["expand_k"] = 0.5;   // 6 -> dk 2
    j["expand_v"] = 1.75;  // 21 -> dv 7
    j["intermediate_size"] = nullptr;
    j["hidden_ratio"] = 3;  // int(12 * 3 * 2 / 3) = 24 -> 256
  }
  if (variant == "mqa") {
    j["num_heads"] = 4;
    j["num_kv_heads"] = 1;
    j["expand_k"] = 2;  // 24 -> dk 6
  }
  return j;
}

// Random fla-layout tensors for a configuration, written as fla's model.safetensors (F32 or BF16) + config.json.
void write_random_fla(const std::string& dir, const json& cfg, uint64_t seed, const std::string& dtype = "F32") {
  const io::FlaConfig info = io::fla_config_from_json(cfg);
  const ModelConfig& c = info.config;
  std::filesystem::create_directories(dir);
  std::mt19937_64 g(seed);
  std::normal_distribution<double> nd;
  std::uniform_real_distribution<double> u(0.7, 1.3);
  io::SafetensorsWriter w;
  Model<double> shapes(c);
  for (const auto& [ours, theirs] : io::fla_tensor_names(c, info.fuse_norm)) {
    const ParamInfo& p = shapes.param_table().at(ours);
    std::vector<float> t(static_cast<size_t>(p.numel()));
    const double scale = p.shape.rank() == 2 ? 1.0 / std::sqrt(static_cast<double>(p.shape[1])) : 0.0;
    for (auto& x : t) x = static_cast<float>(p.shape.rank() == 1 ? u(g) : nd(g) * scale * 1.5);
    w.add(theirs, p.shape, t.data(), dtype);
  }
  w.write(dir + "/model.safetensors");
  std::ofstream(dir + "/config.json") << cfg.dump(1);
}

// fla's forward pass in double, straight from fla's definitions, on fla-layout tensors. logits [B, T, V].
std::vector<double> fla_reference(const std::string& dir, const std::vector<int64_t>& tokens, int64_t B, int64_t Tn) {
  const io::FlaConfig info = io::load_fla_config(dir + "/config.json");
  const ModelConfig& c = info.config;
  const auto file = io::SafetensorsFile::open(dir + "/model.safetensors");
  auto get = [&](const std::string& n) {
    const Shape s = file.shape(n);
    std::vector<double> v(static_cast<size_t>(s.numel()));
    file.read(n, v.data(), s);
    return v;
  };
  const int64_t d = c.decoder_embed_dim, H = c.decoder_retention_heads, kv = c.kv_heads(), G = H / kv;
  const int64_t dk = c.key_dim(), dv = c.value_dim(), F = c.decoder_ffn_embed_dim, V = c.vocab_size;
  const double eps = c.layernorm_eps;
  // y[n, out] = x[n, in] W[out, in]^T
  auto linear = [](const std::vector<double>& x, const std::vector<double>& W, int64_t n, int64_t in, int64_t out) {
    std::vector<double> y(static_cast<size_t>(n * out), 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t o = 0; o < out; ++o) {
        double s = 0;
        for (int64_t k = 0; k < in; ++k) s += x[i * in + k] * W[o * in + k];
        y[i * out + o] = s;
      }
    return y;
  };
  auto rms = [&](std::vector<double> x, const std::vector<double>& w, int64_t n, int64_t width) {
    for (int64_t i = 0; i < n; ++i) {
      double ss = 0;
      for (int64_t j = 0; j < width; ++j) ss += x[i * width + j] * x[i * width + j];
      const double r = 1.0 / std::sqrt(ss / static_cast<double>(width) + eps);
      for (int64_t j = 0; j < width; ++j) x[i * width + j] *= r * w[j % static_cast<int64_t>(w.size())];
    }
    return x;
  };
  auto silu = [](double x) { return x / (1.0 + std::exp(-x)); };
  // fla's RotaryEmbedding: inv_freq = 1 / 10000^(arange(0, dk, 2) / dk) and angles t · inv_freq in float32.
  auto rotate = [&](std::vector<double>& x, int64_t heads, int64_t n_tok) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < n_tok; ++t)
        for (int64_t h = 0; h < heads; ++h) {
          double* p = x.data() + ((b * n_tok + t) * heads + h) * dk;
          for (int64_t i = 0; i < dk / 2; ++i) {
            const float inv =
                1.0f / static_cast<float>(
                           std::pow(10000.0, static_cast<double>(static_cast<float>(2 * i) / static_cast<float>(dk))));
            const double a = static_cast<double>(static_cast<float>(t) * inv);
            const double x0 = p[i], x1 = p[i + dk / 2];
            p[i] = x0 * std::cos(a) - x1 * std::sin(a);
            p[i + dk / 2] = x0 * std::sin(a) + x1 * std::cos(a);
          }
        }
  };
  const int64_t N = B * Tn;
  const auto E = get("model.embeddings.weight");
  std::vector<double> x(static_cast<size_t>(N * d));
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < d; ++j) x[i * d + j] = E[tokens[i] * d + j];
  for (int64_t l = 0; l < c.decoder_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const auto h = rms(x, get(p + "attn_norm.weight"), N, d);
    auto q = linear(h, get(p + "attn.q_proj.weight"), N, d, H * dk);
    auto k = linear(h, get(p + "attn.k_proj.weight"), N, d, kv * dk);
    const auto v = linear(h, get(p + "attn.v_proj.weight"), N, d, kv * dv);
    const auto gt = linear(h, get(p + "attn.g_proj.weight"), N, d, H * dv);
    rotate(q, H, Tn);
    rotate(k, kv, Tn);
    std::vector<double> o(static_cast<size_t>(N * H * dv), 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t hh = 0; hh < H; ++hh) {
        const double gamma = 1.0 - std::pow(2.0, -5.0 - static_cast<double>(hh));
        const int64_t kh = hh / G;
        for (int64_t t = 0; t < Tn; ++t)
          for (int64_t m = 0; m <= t; ++m) {
            double s = 0;
            for (int64_t i = 0; i < dk; ++i)
              s += q[((b * Tn + t) * H + hh) * dk + i] * k[((b * Tn + m) * kv + kh) * dk + i];
            s *= std::pow(gamma, static_cast<double>(t - m)) / std::sqrt(static_cast<double>(dk));
            for (int64_t j = 0; j < dv; ++j)
              o[((b * Tn + t) * H + hh) * dv + j] += s * v[((b * Tn + m) * kv + kh) * dv + j];
          }
      }
    const std::string gn = info.fuse_norm ? "attn.g_norm_swish_gate.weight" : "attn.g_norm.weight";
    auto z = rms(o, get(p + gn), N * H, dv);
    for (size_t i = 0; i < z.size(); ++i) z[i] *= silu(gt[i]);
    const auto y = linear(z, get(p + "attn.o_proj.weight"), N, H * dv, d);
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
    const auto h2 = rms(x, get(p + "mlp_norm.weight"), N, d);
    const auto gate = linear(h2, get(p + "mlp.gate_proj.weight"), N, d, F);
    const auto up = linear(h2, get(p + "mlp.up_proj.weight"), N, d, F);
    std::vector<double> a(gate.size());
    for (size_t i = 0; i < a.size(); ++i) a[i] = silu(gate[i]) * up[i];
    const auto down = linear(a, get(p + "mlp.down_proj.weight"), N, F, d);
    for (size_t i = 0; i < x.size(); ++i) x[i] += down[i];
  }
  const auto xf = rms(x, get("model.norm.weight"), N, d);
  return linear(xf, get(c.share_decoder_input_output_embed ? "model.embeddings.weight" : "lm_head.weight"), N, d, V);
}

std::vector<int64_t> random_tokens(int64_t n, int64_t V, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int64_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int64_t>(g() % static_cast<uint64_t>(V));
  return t;
}

}  // namespace

TEST_CASE("fla config: fields, derived sizes and refusals", "[io][fla]") {
  // fla's defaults are the 1.3B model's shape (intermediate_size derived from hidden_ratio 2).
  const io::FlaConfig d = io::fla_config_from_json(json{{"model_type", "retnet"}});
  CHECK(d.config.decoder_embed_dim == 2048);
  CHECK(d.config.key_embed_dim() == 2048);
  CHECK(d.config.key_dim() == 256);
  CHECK(d.config.value_dim() == 512);
  CHECK(d.config.decoder_ffn_embed_dim == 2816);
  CHECK(d.config.kv_heads() == 8);
  CHECK(d.config.vocab_size == 32000);
  CHECK(d.config.retention_normalization == Normalization::raw);
  CHECK(d.config.rotation == "rope");
  CHECK(d.bos_token_id == 1);
  // hidden_ratio null means 4: int(1024 · 4 · 2/3) = 2730 -> 2816
  CHECK(io::fla_config_from_json(json{{"hidden_size", 1024}, {"hidden_ratio", nullptr}, {"num_heads", 4}})
            .config.decoder_ffn_embed_dim == 2816);
  json j = small_config("plain");
  j["some_new_field"] = 3;
  j["use_cache"] = true;
  const io::FlaConfig r = io::fla_config_from_json(j);
  CHECK(r.report.unknown == std::vector<std::string>{"some_new_field"});
  CHECK(r.report.ignored == std::vector<std::string>{"use_cache"});

  auto refused = [&](const char* field, json value, const std::string& what) {
    json b = small_config("plain");
    b[field] = value;
    CHECK(has(error_of([&] { io::fla_config_from_json(b, "c.json"); }), what));
  };
  refused("use_short_conv", true, "'use_short_conv'");
  refused("feature_map", "elu", "'feature_map'");
  refused("attn", json{{"layers", {0}}, {"num_heads", 2}}, "'attn'");
  refused("attnres_block_size", 2, "'attnres_block_size'");
  refused("use_output_gate", false, "'use_output_gate'");
  refused("elementwise_affine", false, "'elementwise_affine'");
  refused("elementwise_affine", nullptr, "'elementwise_affine'");
  refused("hidden_act", "gelu", "'hidden_act'");
  refused("num_kv_heads", 3, "'num_kv_heads'");
  refused("model_type", "gla", "'model_type'");
  refused("hidden_size", "12", "'hidden_size'");
  refused("expand_v", 1.1, "value width");
  refused("num_heads", 5, "not divisible by num_heads");
  refused("attn_mode", "flash", "'attn_mode'");
  CHECK(io::is_fla_config(small_config("plain")));
  CHECK_FALSE(io::is_fla_config(json{{"decoder_embed_dim", 8}}));
}

TEST_CASE("fla format: our model equals fla's definitions in every form", "[io][fla]") {
  for (const char* variant : {"plain", "grouped", "tied", "mqa"}) {
    INFO(variant);
    const std::string dir = temp_path(std::string("fla_ref_") + variant);
    write_random_fla(dir, small_config(variant), 3);
    const io::FlaConfig info = io::load_fla_config(dir + "/config.json");
    ModelConfig c = info.config;
    c.recurrent_chunk_size = 3;  // several chunks
    Model<double> m(c);
    io::load_fla_weights(m, dir, info);
    const int64_t B = 2, Tn = 7, V = c.vocab_size;
    const auto tokens = random_tokens(B * Tn, V, 5);
    const auto want = fla_reference(dir, tokens, B, Tn);
    double scale = 0;
    for (double w : want) scale = std::max(scale, std::fabs(w));
    REQUIRE(scale > 0.1);
    for (Form f : {Form::parallel, Form::chunkwise, Form::recurrent}) {
      const Tensor<double> got = infer::logits(m, HostView<const int64_t>(tokens.data(), {B, Tn}), f);
      double err = 0;
      for (int64_t i = 0; i < got.numel(); ++i) err = std::max(err, std::fabs(got[i] - want[static_cast<size_t>(i)]));
      INFO(to_string(f) << " max error " << err << " of " << scale);
      CHECK(err <= 1e-10 * scale);
    }
  }
}

TEST_CASE("fla format: save and load round trip, bf16 storage, sharded index", "[io][fla]") {
  const std::string src = temp_path("fla_rt_src");
  write_random_fla(src, small_config("grouped"), 7);
  Model<float> a(io::load_fla_config(src + "/config.json").config);
  io::load_fla_weights(a, src);
  const std::string out = temp_path("fla_rt_out");
  io::save_fla(a, out);
  // The written tensors are the source's, bit for bit (rows reordered back to fla's order).
  {
    const auto x = io::SafetensorsFile::open(src + "/model.safetensors"),
               y = io::SafetensorsFile::open(out + "/model.safetensors");
    REQUIRE(x.names() == y.names());
    for (const auto& n : x.names()) {
      std::vector<float> u(static_cast<size_t>(x.shape(n).numel())), v(u.size());
      x.read(n, u.data(), x.shape(n));
      y.read(n, v.data(), x.shape(n));
      INFO(n);
      CHECK(u == v);
    }
  }
  Model<float> b(io::load_fla_config(out + "/config.json").config);
  io::load_fla_weights(b, out);
  CHECK(a.params_to_host() == b.params_to_host());
  // bf16 storage: the loaded parameters are the bf16 values.
  const std::string bf = temp_path("fla_rt_bf16");
  io::save_fla(a, bf, "BF16");
  Model<float> c(io::load_fla_config(bf + "/config.json").config);
  io::load_fla_weights(c, bf);
  const auto pa = a.params_to_host(), pc = c.params_to_host();
  for (size_t i = 0; i < pa.size(); ++i) REQUIRE(pc[i] == io::detail::bf16_to_float(io::detail::float_to_bf16(pa[i])));
  // A sharded directory: two files and an index.
  const std::string sh = temp_path("fla_sharded");
  std::filesystem::create_directories(sh);
  std::filesystem::copy_file(src + "/config.json", sh + "/config.json");
  {
    const auto x = io::SafetensorsFile::open(src + "/model.safetensors");
    io::SafetensorsWriter w1, w2;
    json map = json::object();
    int i = 0;
    for (const auto& n : x.names()) {
      std::vector<float> u(static_cast<size_t>(x.shape(n).numel()));
      x.read(n, u.data(), x.shape(n));
      (i++ % 2 ? w1 : w2).add(n, x.shape(n), u.data());
      map[n] = (i % 2 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors");
    }
    w1.write(sh + "/model-00002-of-00002.safetensors");
    w2.write(sh + "/model-00001-of-00002.safetensors");
    std::ofstream(sh + "/model.safetensors.index.json")
        << json{{"metadata", json::object()}, {"weight_map", map}}.dump();
  }
  Model<float> s(io::load_fla_config(sh + "/config.json").config);
  io::load_fla_weights(s, sh);
  CHECK(s.params_to_host() == a.params_to_host());
  CHECK(io::is_fla_model_dir(sh));
  // A torchscale-style model cannot be written in fla's format.
  ModelConfig ts;
  ts.vocab_size = 11;
  ts.decoder_embed_dim = 8;
  ts.decoder_value_embed_dim = 8;
  ts.decoder_retention_heads = 2;
  ts.decoder_ffn_embed_dim = 8;
  ts.decoder_layers = 1;
  Model<float> t(ts);
  CHECK(has(error_of([&] { io::save_fla(t, temp_path("fla_ts")); }), "ModelConfig::rotation"));
}

TEST_CASE("fla format: missing, extra, misshapen and truncated tensors are refused", "[io][fla]") {
  const json cfg = small_config("plain");
  const io::FlaConfig info = io::fla_config_from_json(cfg);
  const std::string good = temp_path("fla_bad_src");
  write_random_fla(good, cfg, 9);
  const auto src = io::SafetensorsFile::open(good + "/model.safetensors");
  // Rewrites the directory's tensors through `edit` (name, shape, values) -> keep?
  auto variant = [&](const std::string& name, auto edit) {
    const std::string dir = temp_path(name);
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/config.json") << cfg.dump();
    io::SafetensorsWriter w;
    for (const auto& n : src.names()) {
      Shape s = src.shape(n);
      std::vector<float> u(static_cast<size_t>(s.numel()));
      src.read(n, u.data(), s);
      std::string nn = n;
      if (edit(nn, s, u)) w.add(nn, s, u.data());
    }
    w.write(dir + "/model.safetensors");
    return dir;
  };
  auto load = [&](const std::string& dir) {
    return error_of([&] {
      Model<float> m(info.config);
      io::load_fla_weights(m, dir, info);
    });
  };
  CHECK(has(load(variant("fla_missing", [](std::string& n, Shape&,
                                           std::vector<float>&) { return n != "model.layers.1.mlp.up_proj.weight"; })),
            "missing: model.layers.1.mlp.up_proj.weight"));
  CHECK(has(load(variant("fla_extra",
                         [](std::string& n, Shape&, std::vector<float>&) {
                           if (n == "model.norm.weight") n = "model.norm.bias";
                           return true;
                         })),
            "unexpected: model.norm.bias"));
  CHECK(has(load(variant("fla_shape",
                         [](std::string& n, Shape& s, std::vector<float>& u) {
                           if (n == "model.layers.0.attn.o_proj.weight") {
                             s = Shape{s[1], s[0]};
                           }
                           (void)u;
                           return true;
                         })),
            "wrong shape: model.layers.0.attn.o_proj.weight"));
  // Truncated: the last bytes of the data are gone.
  const std::string tr = temp_path("fla_truncated");
  std::filesystem::create_directories(tr);
  std::filesystem::copy_file(good + "/config.json", tr + "/config.json");
  std::filesystem::copy_file(good + "/model.safetensors", tr + "/model.safetensors");
  std::filesystem::resize_file(tr + "/model.safetensors", std::filesystem::file_size(tr + "/model.safetensors") - 5);
  CHECK_FALSE(load(tr).empty());
  CHECK(has(load(temp_path("fla_nowhere")), "model.safetensors"));
  // A tied model whose stored lm_head differs from the embedding.
  json tied = cfg;
  tied["tie_word_embeddings"] = true;
  const io::FlaConfig ti = io::fla_config_from_json(tied);
  const std::string td = variant("fla_tied_head", [](std::string&, Shape&, std::vector<float>&) { return true; });
  std::ofstream(td + "/config.json") << tied.dump();
  CHECK(has(error_of([&] {
              Model<float> m(ti.config);
              io::load_fla_weights(m, td, ti);
            }),
            "lm_head.weight differs"));
}
