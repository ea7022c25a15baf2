// Dropout and drop path: mask statistics and determinism, whole-row drop path, evaluation mode equal to the
// model without dropout, rate validation. (Gradients: test_model_grad.cpp; resume: tests/train.)
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "retnet/cpu/dropout.hpp"
#include "retnet/nn/model.hpp"
#include "retnet/train/trainer.hpp"
#include "test_util.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace retnet;
using retnet::test::error_of;
using retnet::test::random_tokens;

namespace {

ModelConfig small_cfg() { return retnet::test::small_model_config(); }


std::vector<float> mask_of(const DropoutKey& key, int64_t layer, DropoutSite site, double p, double p_path, int64_t B,
                           int64_t Tn, int64_t width, const int64_t* starts = nullptr) {
  std::vector<float> m(static_cast<size_t>(B * Tn * width));
  fill_dropout_mask(cpu, m.data(), DropoutMaskParams(key, layer, site, p, p_path), B, Tn, width, starts);
  return m;
}

double agreement(const std::vector<float>& a, const std::vector<float>& b) {
  int64_t same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  return static_cast<double>(same) / static_cast<double>(a.size());
}

// Logits of the training-mode forward (key) or the evaluation forward (null) [B·T, V].
std::vector<double> logits_of(Model<double>& m, const std::vector<int64_t>& tokens, int64_t B, int64_t T,
                              const DropoutKey* key, Form form = Form::chunkwise) {
  Model<double>::Workspace ws(m, B, T, true);
  m.forward_train(tokens.data(), form, ws, nullptr, {}, {}, false, false, key);
  return std::vector<double>(ws.logits(), ws.logits() + B * T * m.config().vocab_size);
}

}  // namespace

TEST_CASE("dropout masks: kept fraction, mean and kept value", "[nn][dropout]") {
  const int64_t B = 4, Tn = 64, W = 256, n = B * Tn * W;
  for (double p : {0.1, 0.3, 0.5, 0.9}) {
    const auto m = mask_of({7, 3, 0}, 1, DropoutSite::retention, p, 0.0, B, Tn, W);
    const float kept_value = 1.0f / static_cast<float>(1 - p);
    int64_t kept = 0;
    double sum = 0;
    for (float v : m) {
      REQUIRE((v == 0.0f || v == kept_value));
      kept += v != 0.0f;
      sum += v;
    }
    INFO("p = " << p);
    const double frac = static_cast<double>(kept) / static_cast<double>(n), mean = sum / static_cast<double>(n);
    // 5 standard deviations of the binomial fraction and of the mean of the multipliers
    CHECK(std::abs(frac - (1 - p)) < 5 * std::sqrt(p * (1 - p) / static_cast<double>(n)));
    CHECK(std::abs(mean - 1) < 5 * std::sqrt(p / (1 - p) / static_cast<double>(n)));
  }
}

TEST_CASE("dropout masks are a pure function of seed, step, layer, site, row and position", "[nn][dropout]") {
  const int64_t B = 4, Tn = 16, W = 64;
  const double p = 0.5;
  const DropoutKey key{11, 5, 0};
  const auto base = mask_of(key, 1, DropoutSite::ffn_output, p, 0.0, B, Tn, W);
  CHECK(base == mask_of(key, 1, DropoutSite::ffn_output, p, 0.0, B, Tn, W));
  // anything else in the key gives an unrelated mask (agreement about p² + (1-p)² = 0.5, not 1)
  for (const auto& other : {mask_of({12, 5, 0}, 1, DropoutSite::ffn_output, p, 0.0, B, Tn, W),
                            mask_of({11, 6, 0}, 1, DropoutSite::ffn_output, p, 0.0, B, Tn, W),
                            mask_of(key, 0, DropoutSite::ffn_output, p, 0.0, B, Tn, W),
                            mask_of(key, 1, DropoutSite::retention, p, 0.0, B, Tn, W)})
    CHECK(std::abs(agreement(base, other) - 0.5) < 0.05);
  // rows 2..3 of the batch = a micro-batch of 2 rows at row offset 2
  const auto tail = mask_of({11, 5, 2}, 1, DropoutSite::ffn_output, p, 0.0, 2, Tn, W);
  CHECK(std::equal(tail.begin(), tail.end(), base.begin() + 2 * Tn * W));
  // positions 8..15 = a segment starting at 8; a segment starting at 0 differs
  const std::vector<int64_t> at8(B, 8), at0(B, 0);
  const auto seg = mask_of(key, 1, DropoutSite::ffn_output, p, 0.0, B, 8, W, at8.data());
  const auto seg0 = mask_of(key, 1, DropoutSite::ffn_output, p, 0.0, B, 8, W, at0.data());
  for (int64_t b = 0; b < B; ++b)
    REQUIRE(std::equal(seg.begin() + b * 8 * W, seg.begin() + (b + 1) * 8 * W, base.begin() + (b * Tn + 8) * W));
  CHECK(std::abs(agreement(seg, seg0) - 0.5) < 0.05);
}

#ifdef _OPENMP
TEST_CASE("dropout masks do not depend on the thread count", "[nn][dropout]") {
  const int64_t B = 8, Tn = 64, W = 128;  // above the parallel threshold
  const int before = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = mask_of({5, 9, 0}, 2, DropoutSite::embedding, 0.2, 0.4, B, Tn, W);
  omp_set_num_threads(3);
  const auto three = mask_of({5, 9, 0}, 2, DropoutSite::embedding, 0.2, 0.4, B, Tn, W);
  omp_set_num_threads(before);
  CHECK(one == three);
}
#endif

TEST_CASE("drop path drops or keeps whole batch rows", "[nn][dropout]") {
  const int64_t B = 400, Tn = 3, W = 8;
  for (double p : {0.0, 0.3}) {
    const double pp = 0.5;
    const auto m = mask_of({1, 2, 0}, 3, DropoutSite::retention, p, pp, B, Tn, W);
    const float kept_value = static_cast<float>(1 / (1 - p)) * static_cast<float>(1 / (1 - pp));
    int64_t dropped_rows = 0, zeros_in_kept_rows = 0;
    for (int64_t b = 0; b < B; ++b) {
      const auto first = m.begin() + b * Tn * W, last = first + Tn * W;
      const bool dropped = std::all_of(first, last, [](float v) { return v == 0.0f; });
      dropped_rows += dropped;
      if (!dropped) {
        REQUIRE(std::all_of(first, last, [&](float v) { return v == 0.0f || v == kept_value; }));
        zeros_in_kept_rows += std::count(first, last, 0.0f);
      }
    }
    CHECK((zeros_in_kept_rows > 0) == (p > 0));  // element dropout inside kept rows only when p > 0
    CHECK(std::abs(static_cast<double>(dropped_rows) / B - pp) < 5 * std::sqrt(pp * (1 - pp) / B));
  }
  CHECK(drop_path_rate_of(0.3, 0, 4) == 0.0);
  CHECK(drop_path_rate_of(0.3, 3, 4) == Approx(0.3));
  CHECK(drop_path_rate_of(0.3, 1, 4) == Approx(0.1));
  CHECK(drop_path_rate_of(0.3, 0, 1) == 0.0);  // numpy's linspace(0, r, 1) = [0]
}

TEST_CASE("drop path in the model skips whole rows of a layer's branches", "[nn][dropout]") {
  // Layer 1 of 2 has drop-path rate 0.5 (layer 0 has 0). Each row of the training-mode hidden state must
  // equal, exactly, the evaluation output of a copy whose layer-1 out_proj and fc2 are scaled by 0 (dropped)
  // or by 1 / (1 - 0.5) = 2 (kept): the branch outputs are linear in those weights.
  ModelConfig c = small_cfg();
  c.drop_path_rate = 0.5;
  Model<double> m(c);
  m.init_torchscale(4);
  const int64_t B = 24, T = 5, d = c.decoder_embed_dim;
  const auto tokens = random_tokens(B * T, c.vocab_size, 6);
  const DropoutKey key{21, 0, 0};
  Model<double>::Workspace ws(m, B, T, true);
  m.forward_train(tokens.data(), Form::chunkwise, ws, nullptr, {}, {}, false, false, &key);
  const std::vector<double> train(ws.hidden(), ws.hidden() + B * T * d);

  ModelConfig ce = c;
  ce.drop_path_rate = 0;
  std::vector<std::vector<double>> refs;  // combo = 2·ret_kept + ffn_kept
  for (int combo = 0; combo < 4; ++combo) {
    Model<double> e(ce);
    std::memcpy(e.params(), m.params(), sizeof(double) * static_cast<size_t>(m.param_table().total()));
    const auto& o = e.layer_offsets(1);
    const auto& t = e.param_table();
    auto scale = [&](int64_t off, const char* name, double f) {
      for (int64_t i = 0; i < t.at(name).numel(); ++i) e.params()[off + i] *= f;
    };
    scale(o.out, "layers.1.retention.out_proj.weight", combo & 2 ? 2.0 : 0.0);
    scale(o.fc2, "layers.1.ffn.fc2.weight", combo & 1 ? 2.0 : 0.0);
    Model<double>::Workspace we(e, B, T, false);
    e.forward_train(tokens.data(), Form::chunkwise, we);
    refs.emplace_back(we.hidden(), we.hidden() + B * T * d);
  }
  std::vector<int> seen(4, 0);
  for (int64_t b = 0; b < B; ++b) {
    int matches = 0, which = -1;
    for (int combo = 0; combo < 4; ++combo) {
      bool eq = true;
      for (int64_t i = b * T * d; i < (b + 1) * T * d; ++i)
        eq = eq &&
             std::abs(train[static_cast<size_t>(i)] - refs[static_cast<size_t>(combo)][static_cast<size_t>(i)]) < 1e-12;
      if (eq) ++matches, which = combo;
    }
    INFO("row " << b);
    REQUIRE(matches == 1);
    ++seen[static_cast<size_t>(which)];
  }
  // with 24 rows every combination occurs (for this key; 4 · 0.75^24 ≈ 4e-3 would miss one)
  for (int combo = 0; combo < 4; ++combo) CHECK(seen[static_cast<size_t>(combo)] > 0);
}

TEST_CASE("evaluation mode equals the model without dropout, bit for bit", "[nn][dropout]") {
  ModelConfig c0 = small_cfg(), c1 = small_cfg();
  c1.dropout = 0.3, c1.activation_dropout = 0.2, c1.drop_path_rate = 0.4;
  c1.layernorm_embedding = c0.layernorm_embedding = true;
  Model<double> m0(c0), m1(c1);
  m0.init_torchscale(9);
  std::memcpy(m1.params(), m0.params(), sizeof(double) * static_cast<size_t>(m0.param_table().total()));
  const int64_t B = 3, T = 10;
  const auto tokens = random_tokens(B * T, c0.vocab_size, 2);
  const HostView<const int64_t> tv(tokens.data(), {B, T});
  for (Form f : {Form::chunkwise, Form::parallel, Form::recurrent}) {
    const Tensor<double> a = m0.forward(tv, f), b = m1.forward(tv, f);
    CHECK(std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<size_t>(a.numel())) == 0);
    CHECK(logits_of(m0, tokens, B, T, nullptr, f) == logits_of(m1, tokens, B, T, nullptr, f));
  }
  // a training key on a model whose rates are all 0 changes nothing either
  const DropoutKey key{1, 2, 0};
  CHECK(logits_of(m0, tokens, B, T, &key) == logits_of(m0, tokens, B, T, nullptr));
  // prefill + recurrent steps
  auto s0 = m0.make_state(B), s1 = m1.make_state(B);
  const Tensor<double> p0 = m0.prefill(tv, s0), p1 = m1.prefill(tv, s1);
  CHECK(std::memcmp(p0.data(), p1.data(), sizeof(double) * static_cast<size_t>(p0.numel())) == 0);
  const std::vector<int64_t> next{1, 2, 3};
  const Tensor<double> q0 = m0.step(HostView<const int64_t>(next.data(), {B}), s0),
                       q1 = m1.step(HostView<const int64_t>(next.data(), {B}), s1);
  CHECK(std::memcmp(q0.data(), q1.data(), sizeof(double) * static_cast<size_t>(q0.numel())) == 0);
  // the loss and gradient without a key (evaluation) are those of the model without dropout; one gradient
  // buffer for both, as Eigen's reductions into it depend on its alignment
  const std::vector<int64_t> targets = random_tokens(B * T, c0.vocab_size, 3);
  std::vector<double> grads(static_cast<size_t>(m0.param_table().total()));
  auto loss_grad = [&](Model<double>& m, std::vector<double>& g) {
    GradContext<double> ctx;
    std::fill(grads.begin(), grads.end(), 0.0);
    const LossSum l = loss_and_grad(m, ctx, tokens.data(), targets.data(), B, T, Form::chunkwise, grads.data(), 1.0);
    g = grads;
    return l.sum;
  };
  std::vector<double> g0, g1;
  CHECK(loss_grad(m0, g0) == loss_grad(m1, g1));
  CHECK(g0 == g1);
  // while training mode does change the output, reproducibly, and differently from step to step
  const DropoutKey step3{1, 3, 0};
  const auto t2 = logits_of(m1, tokens, B, T, &key), t3 = logits_of(m1, tokens, B, T, &step3);
  CHECK(t2 != logits_of(m1, tokens, B, T, nullptr));
  CHECK(t2 == logits_of(m1, tokens, B, T, &key));
  CHECK(t2 != t3);
}

TEST_CASE("dropout rates outside [0, 1) are rejected", "[nn][dropout]") {
  auto err = [](void (*set)(ModelConfig&)) {
    ModelConfig c = small_cfg();
    set(c);
    return error_of([&] { Model<float> m(c); });
  };
  auto has = [](const std::string& e, const std::string& what) {
    INFO(e);
    return e.find(what) != std::string::npos;
  };
  CHECK(has(err([](ModelConfig& c) { c.dropout = -0.1; }), "dropout = -0.1"));
  CHECK(has(err([](ModelConfig& c) { c.dropout = 1.0; }), "dropout = 1 "));
  CHECK(has(err([](ModelConfig& c) { c.activation_dropout = 1.5; }), "activation_dropout = 1.5"));
  CHECK(has(err([](ModelConfig& c) { c.activation_dropout = std::nan(""); }), "activation_dropout = nan"));
  CHECK(has(err([](ModelConfig& c) { c.drop_path_rate = INFINITY; }), "drop_path_rate = inf"));
  CHECK(err([](ModelConfig& c) { c.dropout = 0.999, c.activation_dropout = 0, c.drop_path_rate = 0.5; }).empty());
  // training mode needs the gradient workspace (the masks live there)
  ModelConfig c = small_cfg();
  c.dropout = 0.1;
  Model<float> m(c);
  Model<float>::Workspace ws(m, 1, 4, false);
  const std::vector<int64_t> tokens{1, 2, 3, 4};
  const DropoutKey key{};
  CHECK(!error_of([&] {
           m.forward_train(tokens.data(), Form::chunkwise, ws, nullptr, {}, {}, false, false, &key);
         }).empty());
}
