// Finite-difference gradient checks in double for the layers and the whole model, every parameter tensor,
// without and with training-mode dropout (fixed masks: the same key for every evaluation).
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "retnet/cpu/activation.hpp"
#include "retnet/cpu/loss.hpp"
#include "retnet/cpu/norm.hpp"
#include "retnet/nn/model.hpp"
#include "retnet/train/trainer.hpp"

using namespace retnet;

namespace {

ModelConfig tiny(const std::string& variant) {
  ModelConfig c;
  c.decoder_embed_dim = 8;
  c.decoder_retention_heads = 2;
  c.decoder_value_embed_dim = 12;
  c.decoder_ffn_embed_dim = 10;
  c.decoder_layers = 2;
  c.vocab_size = 11;
  c.recurrent_chunk_size = 2;
  c.layernorm_eps = 0;  // group norm scale invariance: the detached retention multipliers do not matter
  if (variant == "swish") c.activation_fn = "swish";
  if (variant == "mlp") c.ffn_type = "mlp";
  if (variant == "layernorm") {
    c.norm_type = "layernorm";
    c.layernorm_embedding = true;
    c.share_decoder_input_output_embed = true;
    c.no_scale_embedding = false;
  }
  if (variant == "embnorm") c.layernorm_embedding = true;
  if (variant == "raw" || variant == "fla") {
    c.retention_normalization = Normalization::raw;
    c.layernorm_eps = 1e-5;
  }
  if (variant == "fla") {  // fla's RetNet: grouped heads, own key width, RoPE angles, group-norm weight, swish
    c.decoder_retention_heads = 4;
    c.decoder_kv_heads = 2;
    c.decoder_key_embed_dim = 16;
    c.rotation = "rope";
    c.group_norm_weight = true;
    c.activation_fn = "swish";
  }
  return c;
}

struct Data {
  std::vector<int64_t> tokens, targets;
};

Data make_data(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  std::mt19937_64 g(seed);
  Data d;
  for (int64_t i = 0; i < B * T; ++i) {
    d.tokens.push_back(static_cast<int64_t>(g() % static_cast<uint64_t>(V)));
    d.targets.push_back(i % 7 == 3 ? kIgnoreIndex : static_cast<int64_t>(g() % static_cast<uint64_t>(V)));
  }
  return d;
}

void perturb(Model<double>& m, uint64_t seed) {
  // norms away from 1 so their gradients are generic
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> u(-0.3, 0.3);
  for (const auto& p : m.param_table().entries())
    if (p.shape.rank() == 1)
      for (int64_t i = 0; i < p.numel(); ++i) m.params()[p.offset + i] += u(g);
}

double loss_of(Model<double>& m, GradContext<double>& ctx, const Data& d, int64_t B, int64_t T, Form form,
               int64_t segment, const DropoutKey* key) {
  std::vector<double> scratch(static_cast<size_t>(m.param_table().total()));
  const LossSum r =
      loss_and_grad(m, ctx, d.tokens.data(), d.targets.data(), B, T, form, scratch.data(), 1.0, segment, key);
  return r.mean();
}

// dropout > 0: all three rates set to it, masks from a fixed key.
void check_model_grad(const std::string& variant, Form form, int64_t segment, double dropout = 0) {
  ModelConfig c = tiny(variant);
  c.dropout = c.activation_dropout = c.drop_path_rate = dropout;
  const DropoutKey fixed{17, 5, 0};
  const DropoutKey* key = dropout > 0 ? &fixed : nullptr;
  Model<double> m(c);
  m.init_torchscale(7);
  perturb(m, 8);
  const int64_t B = 2, T = 7;
  const Data d = make_data(B, T, c.vocab_size, 9);
  GradContext<double> ctx;
  std::vector<double> grads(static_cast<size_t>(m.param_table().total()), 0.0);
  const int64_t count = count_targets(d.targets.data(), B * T);
  loss_and_grad(m, ctx, d.tokens.data(), d.targets.data(), B, T, form, grads.data(), 1.0 / double(count), segment, key);
  std::mt19937_64 g(11);
  for (const auto& p : m.param_table().entries()) {
    INFO(variant << " " << to_string(form) << " segment " << segment << " dropout " << dropout << " " << p.name);
    for (int k = 0; k < 4; ++k) {
      const int64_t i = p.offset + static_cast<int64_t>(g() % static_cast<uint64_t>(p.numel()));
      double& w = m.params()[i];
      const double w0 = w, h = 1e-5;
      w = w0 + h;
      const double lp = loss_of(m, ctx, d, B, T, form, segment, key);
      w = w0 - h;
      const double lm = loss_of(m, ctx, d, B, T, form, segment, key);
      w = w0;
      const double fd = (lp - lm) / (2 * h);
      const double an = grads[static_cast<size_t>(i)];
      CHECK(an == Approx(fd).margin(1e-7).epsilon(1e-5));
    }
  }
}

}  // namespace

TEST_CASE("model gradient matches finite differences (every parameter tensor)", "[nn][grad]") {
  for (Form f : {Form::chunkwise, Form::parallel, Form::recurrent}) check_model_grad("glu", f, 0);
  for (const char* v : {"swish", "mlp", "layernorm", "embnorm", "raw", "fla"}) check_model_grad(v, Form::chunkwise, 0);
  check_model_grad("raw", Form::parallel, 0);
  check_model_grad("fla", Form::parallel, 0);
  check_model_grad("fla", Form::recurrent, 0);
  check_model_grad("fla", Form::chunkwise, 3);
}

TEST_CASE("segmented training gives the exact gradient through the carried state", "[nn][grad][segments]") {
  check_model_grad("glu", Form::chunkwise, 3);
  check_model_grad("raw", Form::chunkwise, 2);
  check_model_grad("raw", Form::parallel, 4);
}

TEST_CASE("model gradient with dropout, activation dropout and drop path matches finite differences",
          "[nn][grad][dropout]") {
  for (Form f : {Form::chunkwise, Form::parallel, Form::recurrent}) check_model_grad("glu", f, 0, 0.3);
  for (const char* v : {"swish", "mlp", "layernorm", "embnorm", "raw"}) check_model_grad(v, Form::chunkwise, 0, 0.3);
  check_model_grad("raw", Form::parallel, 0, 0.3);
  check_model_grad("glu", Form::chunkwise, 3, 0.3);
  check_model_grad("raw", Form::chunkwise, 2, 0.3);
  check_model_grad("raw", Form::parallel, 4, 0.3);
}

TEST_CASE("segments reproduce the whole-sequence loss and gradient", "[nn][segments]") {
  // with dropout too: masks follow absolute positions, so the segments see the whole sequence's masks
  const DropoutKey key{3, 1, 0};
  for (const char* v : {"glu", "raw", "glu+dropout"}) {
    ModelConfig c = tiny(std::string(v) == "raw" ? "raw" : "glu");
    const bool drop = std::string(v) == "glu+dropout";
    if (drop) c.dropout = c.activation_dropout = c.drop_path_rate = 0.3;
    Model<double> m(c);
    m.init_torchscale(3);
    const int64_t B = 2, T = 9;
    const Data d = make_data(B, T, c.vocab_size, 4);
    GradContext<double> ctx;
    std::vector<double> g1(static_cast<size_t>(m.param_table().total())), g2 = g1;
    const DropoutKey* k = drop ? &key : nullptr;
    const LossSum a =
        loss_and_grad(m, ctx, d.tokens.data(), d.targets.data(), B, T, Form::chunkwise, g1.data(), 1.0, 0, k);
    const LossSum b =
        loss_and_grad(m, ctx, d.tokens.data(), d.targets.data(), B, T, Form::chunkwise, g2.data(), 1.0, 4, k);
    CHECK(a.sum == Approx(b.sum).epsilon(1e-10));
    for (size_t i = 0; i < g1.size(); ++i) REQUIRE(g1[i] == Approx(g2[i]).margin(1e-10).epsilon(1e-8));
  }
}

TEST_CASE("norm and activation backward match finite differences", "[nn][grad]") {
  const int64_t n = 3, c = 5;
  std::mt19937_64 g(1);
  std::normal_distribution<double> nd;
  std::vector<double> x(n * c), w(c), b(c), dy(n * c);
  for (auto* v : {&x, &w, &b, &dy})
    for (double& e : *v) e = nd(g);
  for (bool ln : {false, true}) {
    auto f = [&](const std::vector<double>& xx, const std::vector<double>& ww, const std::vector<double>& bb) {
      std::vector<double> y(n * c), mean(n), rstd(n);
      if (ln)
        layernorm_forward(cpu, y.data(), mean.data(), rstd.data(), xx.data(), ww.data(), bb.data(), n, c, 1e-5);
      else
        rmsnorm_forward(cpu, y.data(), rstd.data(), xx.data(), ww.data(), n, c, 1e-5);
      double s = 0;
      for (int64_t i = 0; i < n * c; ++i) s += y[i] * dy[i];
      return s;
    };
    std::vector<double> y(n * c), mean(n), rstd(n), dx(n * c), dw(c, 0.0), db(c, 0.0);
    if (ln) {
      layernorm_forward(cpu, y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), n, c, 1e-5);
      layernorm_backward(cpu, dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(), rstd.data(),
                         n, c);
    } else {
      rmsnorm_forward(cpu, y.data(), rstd.data(), x.data(), w.data(), n, c, 1e-5);
      rmsnorm_backward(cpu, dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), n, c);
    }
    const double h = 1e-6;
    for (int64_t i = 0; i < n * c; ++i) {
      auto xp = x, xm = x;
      xp[i] += h, xm[i] -= h;
      CHECK(dx[i] == Approx((f(xp, w, b) - f(xm, w, b)) / (2 * h)).epsilon(1e-6).margin(1e-8));
    }
    for (int64_t j = 0; j < c; ++j) {
      auto wp = w, wm = w;
      wp[j] += h, wm[j] -= h;
      CHECK(dw[j] == Approx((f(x, wp, b) - f(x, wm, b)) / (2 * h)).epsilon(1e-6).margin(1e-8));
      if (ln) {
        auto bp = b, bm = b;
        bp[j] += h, bm[j] -= h;
        CHECK(db[j] == Approx((f(x, w, bp) - f(x, w, bm)) / (2 * h)).epsilon(1e-6).margin(1e-8));
      }
    }
  }
  for (Activation a : {Activation::gelu, Activation::swish})
    for (double v : {-3.0, -0.7, 0.0, 0.4, 2.5}) {
      const double h = 1e-6;
      CHECK(activate_grad(a, v) == Approx((activate(a, v + h) - activate(a, v - h)) / (2 * h)).epsilon(1e-7));
    }
  CHECK(activate(Activation::gelu, 1.0) == Approx(0.8413447460685429));
}
