// Model structure, forms, prefill + recurrent decoding, input validation, the loss.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "retnet/nn/model.hpp"
#include "retnet/cpu/loss.hpp"
#include "test_util.hpp"

using namespace retnet;
using retnet::test::error_of;
using retnet::test::random_tokens;
using retnet::test::temp_path;

namespace {

ModelConfig small_cfg() {
  ModelConfig c = retnet::test::small_model_config();
  c.layernorm_eps = 0;
  return c;
}


}  // namespace

TEST_CASE("parameter names are torchscale's RetNetDecoder.state_dict() names", "[nn]") {
  ModelConfig c = small_cfg();
  Model<float> m(c);
  std::vector<std::string> names;
  for (const auto& p : m.param_table().entries()) names.push_back(p.name);
  const std::vector<std::string> want = {
      "embed_tokens.weight",
      "output_projection.weight",
      "layers.0.retention.q_proj.weight",
      "layers.0.retention.k_proj.weight",
      "layers.0.retention.v_proj.weight",
      "layers.0.retention.g_proj.weight",
      "layers.0.retention.out_proj.weight",
      "layers.0.retention_layer_norm.weight",
      "layers.0.ffn.fc1.weight",
      "layers.0.ffn.fc2.weight",
      "layers.0.ffn.gate.weight",
      "layers.0.final_layer_norm.weight",
      "layers.1.retention.q_proj.weight",
      "layers.1.retention.k_proj.weight",
      "layers.1.retention.v_proj.weight",
      "layers.1.retention.g_proj.weight",
      "layers.1.retention.out_proj.weight",
      "layers.1.retention_layer_norm.weight",
      "layers.1.ffn.fc1.weight",
      "layers.1.ffn.fc2.weight",
      "layers.1.ffn.gate.weight",
      "layers.1.final_layer_norm.weight",
      "layer_norm.weight",
  };
  CHECK(names == want);
  CHECK(m.param_table().at("layers.0.retention.v_proj.weight").shape == Shape{24, 16});
  CHECK(m.param_table().at("layers.0.retention.out_proj.weight").shape == Shape{16, 24});
  CHECK(m.param_table().at("layers.1.ffn.fc2.weight").shape == Shape{16, 20});

  c.share_decoder_input_output_embed = true;
  c.layernorm_embedding = true;
  c.norm_type = "layernorm";
  c.ffn_type = "mlp";
  Model<float> t(c);
  CHECK(t.param_table().find("output_projection.weight") == nullptr);
  CHECK(t.param_table().find("layernorm_embedding.weight") != nullptr);
  CHECK(t.param_table().find("layernorm_embedding.bias") != nullptr);
  CHECK(t.param_table().find("layers.0.final_layer_norm.bias") != nullptr);
  CHECK(t.param_table().find("layers.0.ffn.gate.weight") == nullptr);
  CHECK(t.param_table().find("layer_norm.bias") != nullptr);
}

TEST_CASE("torchscale initialisation statistics", "[nn]") {
  ModelConfig c = small_cfg();
  c.decoder_embed_dim = 64;
  c.decoder_value_embed_dim = 128;
  c.decoder_ffn_embed_dim = 96;
  c.vocab_size = 300;
  Model<double> m(c);
  m.init_torchscale(1);
  auto stats = [&](const std::string& n) {
    const auto& p = m.param_table().at(n);
    double mx = 0, ss = 0;
    for (int64_t i = 0; i < p.numel(); ++i) {
      const double v = m.params()[p.offset + i];
      mx = std::max(mx, std::abs(v));
      ss += v * v;
    }
    return std::pair<double, double>{mx, std::sqrt(ss / double(p.numel()))};
  };
  const double xq = std::pow(2.0, -2.5) * std::sqrt(6.0 / 128), xv = std::pow(2.0, -2.5) * std::sqrt(6.0 / 192);
  CHECK(stats("layers.0.retention.q_proj.weight").first <= xq);
  CHECK(stats("layers.0.retention.q_proj.weight").first > 0.95 * xq);
  CHECK(stats("layers.0.retention.v_proj.weight").first <= xv);
  CHECK(stats("layers.0.retention.out_proj.weight").first <= 0.5 * std::sqrt(6.0 / 192));
  CHECK(stats("layers.0.retention.out_proj.weight").first > 0.45 * std::sqrt(6.0 / 192));
  CHECK(stats("layers.0.ffn.fc1.weight").first <= 1 / std::sqrt(64.0));
  CHECK(stats("layers.0.ffn.fc2.weight").first <= 1 / std::sqrt(96.0));
  CHECK(stats("layers.0.ffn.fc2.weight").first > 0.95 / std::sqrt(96.0));
  CHECK(stats("embed_tokens.weight").second == Approx(0.125).epsilon(0.05));
  CHECK(stats("output_projection.weight").second == Approx(0.125).epsilon(0.05));
  CHECK(stats("layer_norm.weight").first == 1.0);
  // seeded: same seed, same parameters
  Model<double> m2(c);
  m2.init_torchscale(1);
  CHECK(std::equal(m.params(), m.params() + m.param_table().total(), m2.params()));
}

TEST_CASE("the three forms give the same logits with group-norm eps 0", "[nn][forms]") {
  ModelConfig c = small_cfg();
  Model<double> m(c);
  m.init_torchscale(5);
  const int64_t B = 2, T = 11;
  const auto tok = random_tokens(B * T, c.vocab_size, 3);
  HostView<const int64_t> tv(tok.data(), {B, T});
  const Tensor<double> a = m.forward(tv, Form::parallel);
  const Tensor<double> b = m.forward(tv, Form::chunkwise);
  const Tensor<double> r = m.forward(tv, Form::recurrent);
  REQUIRE(a.shape() == Shape{B, T, c.vocab_size});
  for (int64_t i = 0; i < a.numel(); ++i) {
    REQUIRE(a[i] == Approx(b[i]).margin(1e-9));
    REQUIRE(a[i] == Approx(r[i]).margin(1e-9));
  }
}

TEST_CASE("chunkwise prefill then recurrent steps reproduce the full forward", "[nn][decode]") {
  for (double eps : {0.0, 1e-6}) {
    ModelConfig c = small_cfg();
    c.layernorm_eps = eps;
    Model<double> m(c);
    m.init_torchscale(6);
    const int64_t B = 3, P = 6, G = 5, T = P + G;
    const auto tok = random_tokens(B * T, c.vocab_size, 4);
    // reference: recurrent form over everything (token by token semantics)
    const Tensor<double> ref = m.forward(HostView<const int64_t>(tok.data(), {B, T}), Form::recurrent);
    std::vector<int64_t> prompt;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < P; ++t) prompt.push_back(tok[static_cast<size_t>(b * T + t)]);
    auto st = m.make_state(B);
    // With eps > 0 the forms' normalisers do not cancel (torchscale behaves the same), so the recurrent
    // form prefills there; with eps = 0 the chunkwise prefill must agree exactly.
    Tensor<double> lg =
        m.prefill(HostView<const int64_t>(prompt.data(), {B, P}), st, eps == 0 ? Form::chunkwise : Form::recurrent);
    const double tol = 1e-9;
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t v = 0; v < c.vocab_size; ++v)
          REQUIRE(lg[b * c.vocab_size + v] == Approx(ref[(b * T + P - 1 + g) * c.vocab_size + v]).margin(tol));
      std::vector<int64_t> next;
      for (int64_t b = 0; b < B; ++b) next.push_back(tok[static_cast<size_t>(b * T + P + g)]);
      lg = m.step(HostView<const int64_t>(next.data(), {B}), st);
      CHECK(st.positions[0] == P + g + 1);
    }
  }
}

TEST_CASE("batched decoding: rows at different positions decode independently", "[nn][decode]") {
  ModelConfig c = small_cfg();
  Model<double> m(c);
  m.init_torchscale(8);
  const auto a = random_tokens(7, c.vocab_size, 1), b = random_tokens(3, c.vocab_size, 2);
  // single-row references
  auto run_single = [&](const std::vector<int64_t>& seq) {
    auto st = m.make_state(1);
    Tensor<double> l;
    for (int64_t t : seq) l = m.step(HostView<const int64_t>(&t, {1}), st);
    return l;
  };
  const Tensor<double> la = run_single(a), lb = run_single(b);
  // batched: row 0 gets a's prompt (7 tokens) by prefill of 4 + steps; row 1 only 3 tokens, so prefill
  // both with their own lengths via separate states merged into one batch state
  auto s0 = m.make_state(1), s1 = m.make_state(1);
  m.prefill(HostView<const int64_t>(a.data(), {1, 4}), s0);
  m.prefill(HostView<const int64_t>(b.data(), {1, 2}), s1);
  auto st = m.make_state(2);
  for (size_t l = 0; l < st.kv.size(); ++l) {
    const int64_t kvn = s0.kv[l].numel(), scn = s0.scale[l].numel();
    std::copy_n(s0.kv[l].data(), kvn, st.kv[l].data());
    std::copy_n(s1.kv[l].data(), kvn, st.kv[l].data() + kvn);
    std::copy_n(s0.scale[l].data(), scn, st.scale[l].data());
    std::copy_n(s1.scale[l].data(), scn, st.scale[l].data() + scn);
  }
  st.positions = {4, 2};
  std::vector<int64_t> next = {a[4], b[2]};
  Tensor<double> l = m.step(HostView<const int64_t>(next.data(), {2}), st);
  for (int64_t v = 0; v < c.vocab_size; ++v) CHECK(l[c.vocab_size + v] == Approx(lb[v]).margin(1e-9));
  next = {a[5], b[0]};
  l = m.step(HostView<const int64_t>(next.data(), {2}), st);
  next = {a[6], b[0]};
  l = m.step(HostView<const int64_t>(next.data(), {2}), st);
  for (int64_t v = 0; v < c.vocab_size; ++v) CHECK(l[v] == Approx(la[v]).margin(1e-9));
  // state memory does not grow with length
  CHECK(st.kv[0].numel() == 2 * c.decoder_retention_heads * c.key_dim() * c.value_dim());
}

TEST_CASE("bad token ids and configs are rejected with retnet::Error", "[nn][errors]") {
  ModelConfig c = small_cfg();
  Model<float> m(c);
  std::vector<int64_t> tok = {1, 2, 3, 13, 0, 1};
  const std::string e = error_of([&] { m.forward(HostView<const int64_t>(tok.data(), {2, 3}), Form::chunkwise); });
  CHECK(e.find("token id 13") != std::string::npos);
  CHECK(e.find("[1, 0]") != std::string::npos);
  tok[3] = -1;
  CHECK(!error_of([&] { m.forward(HostView<const int64_t>(tok.data(), {2, 3}), Form::chunkwise); }).empty());
  ModelConfig bad = small_cfg();
  bad.decoder_value_embed_dim = 25;
  CHECK(error_of([&] { Model<float> x(bad); }).find("decoder_value_embed_dim") != std::string::npos);
  auto st = m.make_state(2);
  std::vector<int64_t> one = {1};
  CHECK(error_of([&] { m.step(HostView<const int64_t>(one.data(), {1}), st); }).find("batch") != std::string::npos);
}

TEST_CASE("cross-entropy is stable for large logits and honours the ignore index", "[nn][loss]") {
  std::vector<float> logits = {1e4f, 0.f, -1e4f, 3.f, 3.f, 3.f, 50.f, 50.f, 80.f};
  std::vector<int64_t> tgt = {1, 2, kIgnoreIndex};
  std::vector<float> d(9);
  const LossSum r = cross_entropy_forward_backward(cpu, logits.data(), tgt.data(), 3, 3, d.data(), 0.5);
  CHECK(r.count == 2);
  CHECK(std::isfinite(r.sum));
  CHECK(r.sum == Approx(1e4 + std::log(3.0)).epsilon(1e-6));
  CHECK(d[0] == Approx(0.5f));
  CHECK(d[1] == Approx(-0.5f));
  CHECK(d[5] == Approx(0.5f * (1.f / 3.f - 1.f)));
  for (int i = 6; i < 9; ++i) CHECK(d[static_cast<size_t>(i)] == 0.f);
  tgt[0] = 7;
  CHECK(!error_of([&] { cross_entropy_forward_backward(cpu, logits.data(), tgt.data(), 3, 3); }).empty());
}

TEST_CASE("float and double models agree", "[nn]") {
  ModelConfig c = small_cfg();
  c.layernorm_eps = 1e-6;
  Model<double> md(c);
  md.init_torchscale(12);
  Model<float> mf(c);
  for (int64_t i = 0; i < md.param_table().total(); ++i) mf.params()[i] = static_cast<float>(md.params()[i]);
  const auto tok = random_tokens(2 * 9, c.vocab_size, 13);
  HostView<const int64_t> tv(tok.data(), {2, 9});
  const Tensor<double> a = md.forward(tv, Form::chunkwise);
  const Tensor<float> b = mf.forward(tv, Form::chunkwise);
  for (int64_t i = 0; i < a.numel(); ++i) REQUIRE(double(b[i]) == Approx(a[i]).margin(1e-4));
}
