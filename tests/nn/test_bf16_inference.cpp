// bf16 inference weights: the bf16-weight linear kernel, the model's bf16 mode against float mode, the float
// path untouched when the option is off, staleness and bad use.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "retnet/cpu/linear_bf16.hpp"
#include "retnet/infer/generate.hpp"
#include "retnet/io/model_io.hpp"
#include "retnet/nn/model.hpp"
#include "retnet/train/trainer.hpp"
#include "test_util.hpp"

using namespace retnet;
using retnet::test::error_of;
using retnet::test::random_tokens;
using retnet::test::temp_path;

namespace {

// Big enough that every projection has several 4-row groups and odd sizes (not multiples of 16).
ModelConfig bf16_cfg() {
  ModelConfig c;
  c.decoder_embed_dim = 40;
  c.decoder_retention_heads = 2;
  c.decoder_value_embed_dim = 56;
  c.decoder_ffn_embed_dim = 74;
  c.decoder_layers = 2;
  c.vocab_size = 37;
  c.recurrent_chunk_size = 4;
  return c;
}

template <class T>
double max_abs(const T* a, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(static_cast<double>(a[i])));
  return m;
}
// max |a - b| / max |b|
template <class T>
double rel_err(const Tensor<T>& a, const Tensor<T>& b) {
  REQUIRE(a.shape() == b.shape());
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    m = std::max(m, std::abs(static_cast<double>(a.data()[i]) - static_cast<double>(b.data()[i])));
  return m / max_abs(b.data(), b.numel());
}
template <class T>
bool same_bits(const Tensor<T>& a, const Tensor<T>& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<size_t>(a.numel())) == 0;
}

// Runs prefill(prompt, form) then `steps` recurrent steps; all logits concatenated.
template <class T>
std::vector<Tensor<T>> decode(Model<T>& m, int64_t B, int64_t P, int64_t steps, Form form, uint64_t seed) {
  const int64_t V = m.config().vocab_size;
  const auto prompt = random_tokens(B * P, V, seed);
  auto st = m.make_state(B);
  std::vector<Tensor<T>> out;
  out.push_back(m.prefill(HostView<const int64_t>(prompt.data(), {B, P}), st, form));
  for (int64_t s = 0; s < steps; ++s) {
    const auto tok = random_tokens(B, V, seed + 100 + static_cast<uint64_t>(s));
    out.push_back(m.step(HostView<const int64_t>(tok.data(), {B}), st));
  }
  return out;
}

}  // namespace

TEST_CASE("bf16 rounding is round-to-nearest-even and widening is exact", "[nn][bf16]") {
  auto bits = [](uint32_t u) { return float_to_bf16_bits(std::bit_cast<float>(u)); };
  CHECK(bits(0x3F800000u) == 0x3F80);  // 1.0
  CHECK(bits(0x3F808000u) == 0x3F80);  // halfway, even below: down
  CHECK(bits(0x3F818000u) == 0x3F82);  // halfway, odd below: up
  CHECK(bits(0x3F808001u) == 0x3F81);  // above halfway: up
  CHECK(bits(0xBF807FFFu) == 0xBF80);  // below halfway, negative: toward zero
  CHECK(bits(0x7F7FFFFFu) == 0x7F80);  // FLT_MAX rounds to +inf (as RNE must)
  CHECK(bits(0xFF800000u) == 0xFF80);  // -inf stays
  CHECK(std::isnan(bf16_bits_to_float(float_to_bf16_bits(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isnan(bf16_bits_to_float(bits(0x7F800001u))));  // a NaN whose payload is in the dropped bits
  CHECK(bf16_bits_to_float(0x4049) == 3.140625f);
}

TEMPLATE_TEST_CASE("linear_forward_bf16 matches a reference over the same rounded weights", "[nn][bf16]", float,
                   double) {
  using T = TestType;
  std::mt19937_64 g(7);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<int64_t> rows;
  for (int64_t n = 1; n <= 17; ++n) rows.push_back(n);
  rows.insert(rows.end(), {33, 64, 65, 100});  // 65 and 100: the widen-then-GEMM path
  const int64_t shapes[][2] = {{1, 1}, {7, 5}, {16, 4}, {37, 21}, {515, 130}, {1030, 9}, {96, 1029}};
  for (const auto& sh : shapes) {
    const int64_t in = sh[0], out = sh[1];
    std::vector<T> wf(static_cast<size_t>(in * out));
    for (auto& v : wf) v = static_cast<T>(nd(g));
    std::vector<uint16_t> w16(wf.size());
    to_bf16(w16.data(), wf.data(), in * out);
    for (int64_t n : rows) {
      // keep the test quick, but keep 65 and 100 rows of {515, 130} and {96, 1029}: widening on several threads
      if (in * out * n > 8'000'000) continue;
      std::vector<T> x(static_cast<size_t>(n * in)), y0(static_cast<size_t>(n * out));
      for (auto& v : x) v = static_cast<T>(nd(g));
      for (auto& v : y0) v = static_cast<T>(nd(g));
      for (bool acc : {false, true}) {
        std::vector<T> y = y0;
        linear_forward_bf16(cpu, y.data(), x.data(), w16.data(), n, in, out, acc);
        double worst = 0;
        for (int64_t r = 0; r < n; ++r)
          for (int64_t o = 0; o < out; ++o) {
            double ref = acc ? static_cast<double>(y0[static_cast<size_t>(r * out + o)]) : 0.0, mag = std::abs(ref);
            for (int64_t i = 0; i < in; ++i) {
              const double p = static_cast<double>(x[static_cast<size_t>(r * in + i)]) *
                               static_cast<double>(bf16_bits_to_float(w16[static_cast<size_t>(o * in + i)]));
              ref += p, mag += std::abs(p);
            }
            worst = std::max(worst, std::abs(static_cast<double>(y[static_cast<size_t>(r * out + o)]) - ref) / mag);
          }
        INFO("in " << in << " out " << out << " rows " << n << " accumulate " << acc);
        CHECK(worst < (std::is_same_v<T, float> ? 1e-5 : 1e-12));
      }
    }
  }
}

TEST_CASE("bf16 inference logits stay within bf16 tolerance of float, every form, batch 1 and 3", "[nn][bf16]") {
  Model<float> f(bf16_cfg()), h(bf16_cfg());
  f.init_torchscale(11);
  h.init_torchscale(11);
  h.set_inference_weights(WeightPrecision::bf16);
  CHECK(h.inference_weights() == WeightPrecision::bf16);
  CHECK(f.inference_weights() == WeightPrecision::float32);
  double worst = 0;
  for (Form form : {Form::parallel, Form::chunkwise, Form::recurrent}) {
    for (int64_t B : {1, 3}) {
      const auto toks = random_tokens(B * 9, 37, 5 + static_cast<uint64_t>(B));
      const HostView<const int64_t> tv(toks.data(), {B, 9});
      const double e = rel_err(h.forward(tv, form), f.forward(tv, form));
      INFO("forward, form " << static_cast<int>(form) << " batch " << B << ": " << e);
      CHECK(e < 2e-2);
      CHECK(e > 0);  // the bf16 copy is really used
      worst = std::max(worst, e);
      const auto a = decode(h, B, 7, 5, form, 21), b = decode(f, B, 7, 5, form, 21);
      for (size_t s = 0; s < a.size(); ++s) {
        const double es = rel_err(a[s], b[s]);
        INFO("prefill + steps, form " << static_cast<int>(form) << " batch " << B << " step " << s << ": " << es);
        CHECK(es < 2e-2);
        worst = std::max(worst, es);
      }
    }
  }
  WARN("bf16 vs float logits, worst relative error (max abs diff / max abs logit): " << worst);
}

TEST_CASE("bf16 mode equals float mode over bf16-rounded matrices (every projection uses the copy)", "[nn][bf16]") {
  ModelConfig c = bf16_cfg();
  for (bool tied : {false, true}) {
    for (const char* ffn : {"glu", "mlp"}) {
      c.share_decoder_input_output_embed = tied;
      c.ffn_type = ffn;
      Model<float> h(c), r(c);
      h.init_torchscale(3);
      r.init_torchscale(3);
      h.set_inference_weights(WeightPrecision::bf16);
      // r: float model whose matrices hold the bf16-rounded values (the embedding only when it is also the head)
      float* P = r.params();
      for (const auto& e : r.param_table().entries()) {
        if (e.shape.rank() != 2 || (e.name == "embed_tokens.weight" && !tied)) continue;
        for (int64_t i = 0; i < e.numel(); ++i)
          P[e.offset + i] = bf16_bits_to_float(float_to_bf16_bits(P[e.offset + i]));
      }
      // Tied: r's gathered embedding rows are rounded too (h gathers float rows), so only bf16 closeness holds.
      const double tol = tied ? 2e-2 : 2e-5;
      for (int64_t B : {1, 3}) {
        const auto a = decode(h, B, 6, 4, Form::chunkwise, 9), b = decode(r, B, 6, 4, Form::chunkwise, 9);
        for (size_t s = 0; s < a.size(); ++s) {
          INFO("tied " << tied << " ffn " << ffn << " batch " << B << " step " << s);
          CHECK(rel_err(a[s], b[s]) < tol);
        }
      }
    }
  }
}

TEST_CASE("with bf16 off the float path is bit-identical; training ignores the bf16 copy", "[nn][bf16]") {
  Model<float> a(bf16_cfg()), b(bf16_cfg());
  a.init_torchscale(4);
  b.init_torchscale(4);
  b.set_inference_weights(WeightPrecision::bf16);
  const auto toks = random_tokens(2 * 8, 37, 2);
  const HostView<const int64_t> tv(toks.data(), {2, 8});
  // training-side forward with the copy on: float weights, bit-identical
  typename Model<float>::Workspace wa(a, 2, 8), wb(b, 2, 8);
  a.forward_train(toks.data(), Form::chunkwise, wa);
  b.forward_train(toks.data(), Form::chunkwise, wb);
  CHECK(std::memcmp(wa.logits(), wb.logits(), sizeof(float) * 2 * 8 * 37) == 0);
  CHECK_FALSE(same_bits(a.forward(tv, Form::chunkwise), b.forward(tv, Form::chunkwise)));  // bf16 on: differs
  b.set_inference_weights(WeightPrecision::float32);
  CHECK(b.inference_weights() == WeightPrecision::float32);
  for (Form form : {Form::parallel, Form::chunkwise, Form::recurrent})
    CHECK(same_bits(a.forward(tv, form), b.forward(tv, form)));
  const auto da = decode(a, 3, 5, 4, Form::chunkwise, 8), db = decode(b, 3, 5, 4, Form::chunkwise, 8);
  for (size_t s = 0; s < da.size(); ++s) CHECK(same_bits(da[s], db[s]));
}

TEST_CASE("greedy generation with bf16 weights is deterministic", "[nn][bf16]") {
  Model<float> m(bf16_cfg());
  m.init_torchscale(6);
  m.set_inference_weights(WeightPrecision::bf16);
  const std::vector<std::vector<int64_t>> prompts = {{1, 2, 3, 4}, {5, 6}, {7, 8, 9, 10}};
  infer::GenerateOptions o{.max_new_tokens = 12, .sampling = {.greedy = true}};
  const auto x = infer::generate(m, prompts, o), y = infer::generate(m, prompts, o);
  CHECK(x == y);
  REQUIRE(x.size() == 3);
  CHECK(x[0].size() == 12);
}

TEST_CASE("a stale bf16 copy and bad precision values are rejected", "[nn][bf16]") {
  Model<float> m(bf16_cfg());
  m.init_torchscale(2);
  const auto toks = random_tokens(4, 37, 1);
  const HostView<const int64_t> tv(toks.data(), {1, 4});
  m.set_inference_weights(WeightPrecision::bf16);
  CHECK(error_of([&] { m.forward(tv, Form::parallel); }).empty());
  m.params()[0] += 1.0f;  // a parameter update after the copy was made
  for (auto e : {error_of([&] { m.forward(tv, Form::parallel); }), error_of([&] {
                   auto st = m.make_state(1);
                   m.prefill(tv, st);
                 }),
                 error_of([&] {
                   auto st = m.make_state(1);
                   const int64_t t = 3;
                   m.step(HostView<const int64_t>(&t, {1}), st);
                 })})
    CHECK(e.find("set_inference_weights") != std::string::npos);
  m.set_inference_weights(WeightPrecision::bf16);  // rebuilt: accepted again
  CHECK(error_of([&] { m.forward(tv, Form::parallel); }).empty());

  // A Trainer step changes the parameters: the copy goes stale.
  Trainer<float> tr(m, {});
  const auto y = random_tokens(4, 37, 9);
  tr.step(tv, HostView<const int64_t>(y.data(), {1, 4}));
  CHECK(error_of([&] { m.forward(tv, Form::parallel); }).find("set_inference_weights") != std::string::npos);
  m.set_inference_weights(WeightPrecision::float32);  // float mode never goes stale
  CHECK(error_of([&] { m.forward(tv, Form::parallel); }).empty());

  CHECK(error_of([&] { m.set_inference_weights(static_cast<WeightPrecision>(7)); }).find("unknown precision") !=
        std::string::npos);
  CHECK(m.inference_weights() == WeightPrecision::float32);
}

TEST_CASE("checkpoints keep float weights with bf16 inference on", "[nn][bf16]") {
  Model<float> m(bf16_cfg()), back(bf16_cfg());
  m.init_torchscale(8);
  m.set_inference_weights(WeightPrecision::bf16);
  const std::string path = temp_path("bf16_mode.safetensors");
  io::save_weights(std::as_const(m), path);
  io::load_weights(back, path);
  const Model<float>& cm = m;
  CHECK(std::memcmp(cm.params(), std::as_const(back).params(),
                    sizeof(float) * static_cast<size_t>(cm.param_table().total())) == 0);
}
