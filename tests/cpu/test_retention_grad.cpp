// Finite-difference gradient checks of the three CPU retention forms in double, for q, k, v and the initial
// state, through o and the final state, in both normalisation modes.
//
// The multipliers are detached (docs/SEMANTICS.md), so in torchscale mode the analytic gradient is the
// gradient of the loss with the multipliers frozen at their forward values. The test recovers each row's
// multiplier from the library's output (o_n = mu_n r_n, with r_n from the naive reference), then takes finite
// differences of  sum_n mu_n W_n . r_n(x) + W_f . U_final(x) / sqrt(scale_final)  with mu frozen.
// In raw mode (mu = 1) and for the recurrent form (mu depends on positions only) the finite differences go
// straight through the library's forward pass.
#include <catch2/catch.hpp>
#include <functional>

#include "cpu/retention_helpers.hpp"

using namespace rtest;

namespace {

using Loss = std::function<double(const Problem<double>&)>;

// Central differences of loss at p for every element of each input tensor, compared with the analytic grads.
void check_gradients(const Problem<double>& p, const Grads<double>& g, const Loss& loss) {
  const double h = 1e-5;
  struct Item {
    const char* name;
    Tensor<double> Problem<double>::*input;
    const Tensor<double>* grad;
  };
  std::vector<Item> items = {
      {"q", &Problem<double>::q, &g.dq}, {"k", &Problem<double>::k, &g.dk}, {"v", &Problem<double>::v, &g.dv}};
  if (p.has_state) items.push_back({"state_kv", &Problem<double>::kv0, &g.dkv0});
  for (const Item& it : items) {
    INFO("gradient of " << it.name);
    Problem<double> x = p;
    Tensor<double> fd((p.*(it.input)).shape());
    for (int64_t i = 0; i < fd.numel(); ++i) {
      const double saved = (x.*(it.input))[i];
      (x.*(it.input))[i] = saved + h;
      const double up = loss(x);
      (x.*(it.input))[i] = saved - h;
      const double down = loss(x);
      (x.*(it.input))[i] = saved;
      fd[i] = (up - down) / (2 * h);
    }
    CHECK(max_rel_diff(*it.grad, fd) < 1e-7);
  }
}

double dot(const Tensor<double>& a, const Tensor<double>& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += a[i] * b[i];
  return s;
}

const std::vector<Case> grad_cases = {
    {2, 10, 2, 4, 6, 3, true},   // ragged last chunk, initial state
    {1, 9, 3, 6, 4, 16, false},  // chunk longer than the sequence, no state, dv < dk
    {1, 12, 1, 4, 4, 4, true},   // chunks divide the length
    {2, 5, 2, 2, 3, 1, true},    // chunk size 1
};

}  // namespace

TEST_CASE("raw mode: gradients of every form match finite differences") {
  uint64_t seed = 1000;
  for (const Case& c : grad_cases) {
    const RetentionConfig cfg = make_config(c, Normalization::raw);
    const Problem<double> p = make_problem(c, seed++);
    const Tensor<double> Wo = random_like(p.v.shape(), seed++), Wf = random_like(p.kv0.shape(), seed++);
    for (Form f : all_forms) {
      INFO(name(f) << " T=" << c.T << " C=" << c.C << (c.state ? " with state" : ""));
      const Grads<double> g = backward(f, cfg, p, Wo, &Wf);
      check_gradients(p, g, [&](const Problem<double>& x) {
        const Result<double> r = forward(f, cfg, x);
        return dot(Wo, r.o) + dot(Wf, r.kv);
      });
      if (!p.has_state) {
        // Without an initial state, d_state_kv is the gradient with respect to a zero state: gamma dU_0.
        Problem<double> z = p;
        z.has_state = true;
        z.kv0 = Tensor<double>(p.kv0.shape());
        const Grads<double> gz = backward(f, cfg, z, Wo, &Wf);
        CHECK(max_rel_diff(g.dkv0, gz.dkv0) < 1e-14);
      }
    }
  }
}

TEST_CASE("torchscale mode: gradients match finite differences with the multipliers frozen") {
  uint64_t seed = 2000;
  for (const Case& c : grad_cases) {
    const RetentionConfig cfg = make_config(c, Normalization::torchscale);
    const Problem<double> p = make_problem(c, seed++);
    const Tensor<double> Wo = random_like(p.v.shape(), seed++), Wf = random_like(p.kv0.shape(), seed++);
    for (Form f : all_forms) {
      INFO(name(f) << " T=" << c.T << " C=" << c.C << (c.state ? " with state" : ""));
      const Result<double> base = forward(f, cfg, p);
      const RawRef ref = raw_reference(cfg.gammas(), p.q, p.k, p.v, raw_initial_state(p, Normalization::torchscale));
      // Frozen multipliers: mu_n = (o_n . r_n) / (r_n . r_n); check that o_n really is mu_n r_n.
      const int64_t rows = p.B * p.T * p.H, dv = p.dv;
      std::vector<double> mu(static_cast<size_t>(rows));
      double worst = 0;
      for (int64_t i = 0; i < rows; ++i) {
        double orr = 0, rr = 0, oo = 0;
        for (int64_t j = 0; j < dv; ++j) {
          orr += base.o[i * dv + j] * ref.r[i * dv + j];
          rr += ref.r[i * dv + j] * ref.r[i * dv + j];
          oo += base.o[i * dv + j] * base.o[i * dv + j];
        }
        mu[static_cast<size_t>(i)] = orr / rr;
        REQUIRE(mu[static_cast<size_t>(i)] > 0);
        for (int64_t j = 0; j < dv; ++j)
          worst = std::max(worst, std::abs(base.o[i * dv + j] - mu[static_cast<size_t>(i)] * ref.r[i * dv + j]) /
                                      std::sqrt(oo / static_cast<double>(dv)));
      }
      CHECK(worst < 1e-12);
      Tensor<double> inv_root_scale({p.B, p.H});
      for (int64_t i = 0; i < p.B * p.H; ++i) inv_root_scale[i] = 1.0 / std::sqrt(static_cast<double>(base.scale[i]));
      const Grads<double> g = backward(f, cfg, p, Wo, &Wf);
      check_gradients(p, g, [&](const Problem<double>& x) {
        const RawRef r = raw_reference(cfg.gammas(), x.q, x.k, x.v, raw_initial_state(x, Normalization::torchscale));
        double s = 0;
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = 0; j < dv; ++j) s += mu[static_cast<size_t>(i)] * Wo[i * dv + j] * r.r[i * dv + j];
        const int64_t per = p.dk * p.dv;
        for (int64_t i = 0; i < r.U.numel(); ++i) s += Wf[i] * r.U[i] * inv_root_scale[i / per];
        return s;
      });
      if (f == Form::recurrent) {
        // The recurrent multipliers do not depend on the inputs: differentiate straight through the library.
        check_gradients(p, g, [&](const Problem<double>& x) {
          const Result<double> r = forward(f, cfg, x);
          return dot(Wo, r.o) + dot(Wf, r.kv);
        });
      }
    }
  }
}

TEST_CASE("torchscale mode: without a final-state gradient only d_o flows") {
  const Case c{2, 11, 2, 4, 6, 4, true};
  const RetentionConfig cfg = make_config(c, Normalization::torchscale);
  const Problem<double> p = make_problem(c, 3000);
  const Tensor<double> Wo = random_like(p.v.shape(), 3001), zero(p.kv0.shape());
  for (Form f : all_forms) {
    INFO(name(f));
    const Grads<double> a = backward(f, cfg, p, Wo, nullptr);
    const Grads<double> b = backward(f, cfg, p, Wo, &zero);
    // Equal up to rounding (Eigen's vectorisation may depend on the alignment of the output buffers).
    CHECK(max_rel_diff(a, b) < 1e-15);
  }
}
