// The torchscale multipliers against a direct, slow transcription of torchscale's three code paths
// (RETNET_REFERENCE.md 3.2 and 3.4); long sequences in float; bad input; checked mode.
#include <catch2/catch.hpp>

#include "cpu/retention_helpers.hpp"
#include "test_util.hpp"

using namespace rtest;
using retnet::test::error_of;

namespace {

using Vecd = std::vector<double>;

// One (batch, head) slice as [T][D] arrays.
struct Head {
  std::vector<Vecd> q, k, v;
};

Head head_of(const Problem<double>& p, int64_t b, int64_t h) {
  Head r;
  for (int64_t n = 0; n < p.T; ++n) {
    const double* q = p.q.data() + ((b * p.T + n) * p.H + h) * p.dk;
    const double* k = p.k.data() + ((b * p.T + n) * p.H + h) * p.dk;
    const double* v = p.v.data() + ((b * p.T + n) * p.H + h) * p.dv;
    r.q.emplace_back(q, q + p.dk);
    r.k.emplace_back(k, k + p.dk);
    r.v.emplace_back(v, v + p.dv);
  }
  return r;
}

double dotv(const Vecd& a, const Vecd& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// torchscale parallel: D~_nm = gamma^(n-m) / sqrt(row sum of the decay mask), R = (q k^T) . D~,
// c = clamp(sum |R|, 1, 5e4), O = (R / c) V.
std::vector<Vecd> torchscale_parallel(const Head& x, double g) {
  const size_t T = x.q.size(), dv = x.v[0].size();
  std::vector<Vecd> o(T, Vecd(dv, 0.0));
  for (size_t n = 0; n < T; ++n) {
    double mask_sum = 0;
    for (size_t m = 0; m <= n; ++m) mask_sum += std::pow(g, static_cast<double>(n - m));
    Vecd R(n + 1);
    double c = 0;
    for (size_t m = 0; m <= n; ++m) {
      R[m] = dotv(x.q[n], x.k[m]) * std::pow(g, static_cast<double>(n - m)) / std::sqrt(mask_sum);
      c += std::abs(R[m]);
    }
    c = std::clamp(c, 1.0, 5e4);
    for (size_t m = 0; m <= n; ++m)
      for (size_t j = 0; j < dv; ++j) o[n][j] += R[m] / c * x.v[m][j];
  }
  return o;
}

// torchscale recurrent (incremental decoding), state kv stored [dv][dk] as torchscale does.
std::vector<Vecd> torchscale_recurrent(const Head& x, double g) {
  const size_t T = x.q.size(), dk = x.q[0].size(), dv = x.v[0].size();
  std::vector<Vecd> o(T, Vecd(dv, 0.0));
  std::vector<Vecd> kv(dv, Vecd(dk, 0.0));
  double scale = 0;
  for (size_t n = 0; n < T; ++n) {
    if (n == 0) {
      scale = 1;
      for (size_t j = 0; j < dv; ++j)
        for (size_t i = 0; i < dk; ++i) kv[j][i] = x.k[n][i] * x.v[n][j];
    } else {
      const double prev = scale;
      scale = prev * g + 1;
      for (size_t j = 0; j < dv; ++j)
        for (size_t i = 0; i < dk; ++i)
          kv[j][i] = kv[j][i] * (std::sqrt(prev) * g / std::sqrt(scale)) + x.k[n][i] * x.v[n][j] / std::sqrt(scale);
    }
    for (size_t j = 0; j < dv; ++j)
      for (size_t i = 0; i < dk; ++i) o[n][j] += x.q[n][i] * kv[j][i];
  }
  return o;
}

// torchscale chunkwise with chunk Bc; the sequence is zero-padded at the end to a multiple of Bc, as
// torchscale's decoder does, and the padding rows are dropped.
std::vector<Vecd> torchscale_chunkwise(Head x, double g, size_t Bc) {
  const size_t T = x.q.size(), dk = x.q[0].size(), dv = x.v[0].size();
  const size_t Tp = (T + Bc - 1) / Bc * Bc;
  x.q.resize(Tp, Vecd(dk, 0.0)), x.k.resize(Tp, Vecd(dk, 0.0)), x.v.resize(Tp, Vecd(dv, 0.0));
  // Relative-position tables (3.2).
  std::vector<Vecd> mask(Bc, Vecd(Bc, 0.0));
  Vecd scale(Bc);
  for (size_t i = 0; i < Bc; ++i) {
    double s = 0;
    for (size_t j = 0; j <= i; ++j) s += (mask[i][j] = std::pow(g, static_cast<double>(i - j)));
    scale[i] = std::sqrt(s);
  }
  double last_sum = 0;
  for (size_t j = 0; j < Bc; ++j) last_sum += mask[Bc - 1][j];
  Vecd value_inner_decay(Bc), query_inner_decay(Bc);
  for (size_t j = 0; j < Bc; ++j) value_inner_decay[j] = mask[Bc - 1][j] / last_sum;
  for (size_t i = 0; i < Bc; ++i)
    query_inner_decay[i] = std::pow(g, static_cast<double>(i + 1)) / (scale[i] / last_sum);
  const double cross_decay = std::pow(g, static_cast<double>(Bc));
  // The recurrence over chunks.
  const size_t N = Tp / Bc;
  std::vector<std::vector<Vecd>> kv_recurrent(N, std::vector<Vecd>(dk, Vecd(dv, 0.0)));
  Vecd cross_scale(N);
  std::vector<Vecd> kv_state(dk, Vecd(dv, 0.0));
  double kv_scale = 1;
  for (size_t c = 0; c < N; ++c) {
    for (size_t i = 0; i < dk; ++i)
      for (size_t j = 0; j < dv; ++j) kv_recurrent[c][i][j] = kv_state[i][j] / kv_scale;
    cross_scale[c] = kv_scale;
    for (size_t i = 0; i < dk; ++i)
      for (size_t j = 0; j < dv; ++j) {
        double kvc = 0;
        for (size_t t = 0; t < Bc; ++t) kvc += x.k[c * Bc + t][i] * x.v[c * Bc + t][j] * value_inner_decay[t];
        kv_state[i][j] = kv_state[i][j] * cross_decay + kvc;
      }
    kv_scale = 0;
    for (size_t j = 0; j < dv; ++j) {
      double col = 0;
      for (size_t i = 0; i < dk; ++i) col += std::abs(kv_state[i][j]);
      kv_scale = std::max(kv_scale, col);
    }
    kv_scale = std::max(kv_scale, 1.0);
  }
  std::vector<Vecd> o(T, Vecd(dv, 0.0));
  for (size_t c = 0; c < N; ++c)
    for (size_t i = 0; i < Bc; ++i) {
      const size_t n = c * Bc + i;
      if (n >= T) break;
      Vecd A(Bc, 0.0);
      double inner_scale = 0;
      for (size_t j = 0; j <= i; ++j) {
        A[j] = dotv(x.q[n], x.k[c * Bc + j]) * mask[i][j] / scale[i];
        inner_scale += std::abs(A[j]);
      }
      inner_scale = std::max(inner_scale, 1.0);
      const double all_scale = std::max(inner_scale, cross_scale[c]);
      for (size_t jv = 0; jv < dv; ++jv) {
        double inner = 0, cross = 0;
        for (size_t j = 0; j <= i; ++j) inner += A[j] / inner_scale * x.v[c * Bc + j][jv];
        for (size_t ik = 0; ik < dk; ++ik) cross += x.q[n][ik] * query_inner_decay[i] * kv_recurrent[c][ik][jv];
        o[n][jv] = inner * (inner_scale / all_scale) + cross * (cross_scale[c] / all_scale);
      }
    }
  return o;
}

}  // namespace

TEST_CASE("torchscale mode reproduces torchscale's three code paths (no initial state)") {
  // Input scales 0.2 and 4 make the clamps (1 and the kv scale) bind in some rows and not in others.
  const std::vector<Case> cases = {{2, 130, 3, 8, 12, 16, false},
                                   {1, 64, 2, 24, 8, 64, false},
                                   {2, 7, 3, 8, 6, 16, false},
                                   {1, 50, 8, 8, 8, 3, false}};
  uint64_t seed = 4000;
  for (const Case& c : cases)
    for (double amp : {0.2, 4.0}) {
      INFO("T=" << c.T << " C=" << c.C << " H=" << c.H << " amplitude " << amp);
      const RetentionConfig cfg = make_config(c, Normalization::torchscale);
      Problem<double> p = make_problem(c, seed++);
      for (auto* t : {&p.q, &p.k, &p.v})
        for (auto& x : t->storage()) x *= amp;
      const Result<double> par = forward(Form::parallel, cfg, p), rec = forward(Form::recurrent, cfg, p),
                           chk = forward(Form::chunkwise, cfg, p);
      Tensor<double> want_par(par.o.shape()), want_rec(par.o.shape()), want_chk(par.o.shape());
      for (int64_t b = 0; b < p.B; ++b)
        for (int64_t h = 0; h < p.H; ++h) {
          const Head x = head_of(p, b, h);
          const double g = cfg.gammas()[static_cast<size_t>(h)];
          const auto op = torchscale_parallel(x, g), orc = torchscale_recurrent(x, g),
                     oc = torchscale_chunkwise(x, g, static_cast<size_t>(c.C));
          for (int64_t n = 0; n < p.T; ++n)
            for (int64_t j = 0; j < p.dv; ++j) {
              const int64_t at = ((b * p.T + n) * p.H + h) * p.dv + j;
              want_par[at] = op[static_cast<size_t>(n)][static_cast<size_t>(j)];
              want_rec[at] = orc[static_cast<size_t>(n)][static_cast<size_t>(j)];
              want_chk[at] = oc[static_cast<size_t>(n)][static_cast<size_t>(j)];
            }
        }
      CHECK(max_rel_diff(par.o, want_par) < 1e-12);
      CHECK(max_rel_diff(rec.o, want_rec) < 1e-12);
      CHECK(max_rel_diff(chk.o, want_chk) < 1e-12);
    }
}

TEST_CASE("a long sequence stays finite in float (T = 65536, 16 heads)") {
  const Case c{1, 65536, 16, 8, 8, 128, false};
  for (Normalization norm : {Normalization::torchscale, Normalization::raw}) {
    INFO(to_string(norm));
    const RetentionConfig cfg = make_config(c, norm);
    Problem<float> p;
    p.B = c.B, p.T = c.T, p.H = c.H, p.dk = c.dk, p.dv = c.dv;
    std::mt19937 rng(7);
    std::normal_distribution<float> normal;
    p.q = Tensor<float>({c.B, c.T, c.H, c.dk});
    p.k = Tensor<float>({c.B, c.T, c.H, c.dk});
    p.v = Tensor<float>({c.B, c.T, c.H, c.dv});
    p.kv0 = Tensor<float>({c.B, c.H, c.dk, c.dv});
    p.s0 = Tensor<float>({c.B, c.H});
    for (auto* t : {&p.q, &p.k, &p.v})
      for (auto& x : t->storage()) x = normal(rng);
    const Result<float> r = forward(Form::chunkwise, cfg, p);
    auto all_finite = [](const Tensor<float>& t) {
      return std::all_of(t.storage().begin(), t.storage().end(), [](float x) { return std::isfinite(x); });
    };
    CHECK(all_finite(r.o));
    CHECK(all_finite(r.kv));
    if (norm == Normalization::torchscale) {  // the backward pass too (once: it is slow in debug builds)
      const Tensor<float> d_o(p.v.shape(), 1.0f);
      const Grads<float> g = backward(Form::chunkwise, cfg, p, d_o, nullptr);
      CHECK(all_finite(g.dq));
      CHECK(all_finite(g.dk));
      CHECK(all_finite(g.dv));
    }
    // The slowest head's scale approaches 1 / (1 - gamma) = 2^20.
    CHECK(r.scale[15] == Approx(std::pow(2.0, 20) * (1 - std::pow(1 - std::pow(2.0, -20), 65536))).epsilon(1e-4));
  }
}

TEST_CASE("bad input raises retnet::Error naming the problem") {
  const Case c{2, 5, 2, 4, 6, 3, true};
  const RetentionConfig cfg = make_config(c, Normalization::torchscale);
  const Problem<double> p = make_problem(c, 5000);
  Tensor<double> o({2, 5, 2, 6}), kv({2, 2, 4, 6}), sc({2, 2});
  auto fwd = [&](Form f, RetentionInputs<double> in, HostView<double> out) {
    return error_of([&] { retention_forward(cpu, f, cfg, in, RetentionOutputs<double>{out, kv.view(), sc.view()}); });
  };
  for (Form f : all_forms) {
    INFO(name(f));
    const std::string op = std::string("retention_") + name(f) + "_forward";
    RetentionInputs<double> in = p.inputs();
    // Mismatched shapes.
    Tensor<double> k_short({2, 4, 2, 4});
    in.k = k_short.cview();
    CHECK_THAT(fwd(f, in, o.view()), Catch::Contains(op) && Catch::Contains("k has shape [2, 4, 2, 4]") &&
                                         Catch::Contains("expected [2, 5, 2, 4]"));
    in = p.inputs();
    Tensor<double> v_wide({2, 5, 2, 4});
    in.v = v_wide.cview();
    CHECK_THAT(fwd(f, in, o.view()), Catch::Contains("v has shape"));
    in = p.inputs();
    Tensor<double> o_bad({2, 5, 3, 6});
    CHECK_THAT(fwd(f, in, o_bad.view()), Catch::Contains("o has shape"));
    // Zero and negative sizes.
    double dummy[8] = {};
    in.q = HostView<const double>(dummy, Shape{2, 0, 2, 4});
    CHECK_THAT(fwd(f, in, o.view()), Catch::Contains("length = 0") && Catch::Contains("must be positive"));
    in.q = HostView<const double>(dummy, Shape{-1, 5, 2, 4});
    CHECK_THAT(fwd(f, in, o.view()), Catch::Contains("batch = -1"));
    // Missing tensors.
    in = p.inputs();
    in.v = {};
    CHECK_THAT(fwd(f, in, o.view()), Catch::Contains("v is missing"));
    // State without scale in torchscale mode, and a negative scale.
    in = p.inputs();
    in.state_scale = {};
    CHECK_THAT(fwd(f, in, o.view()), Catch::Contains("state_kv is given without state_scale"));
    Tensor<double> neg = p.s0;
    neg[3] = -1;
    in.state_scale = neg.cview();
    CHECK_THAT(fwd(f, in, o.view()), Catch::Contains("state_scale[1, 1] = -1"));
    // Backward: a gradient of the wrong shape.
    in = p.inputs();
    Tensor<double> dq({2, 5, 2, 4}), dk({2, 5, 2, 4}), dv({2, 5, 2, 6}), d_o_bad({2, 5, 2, 5});
    CHECK_THAT(error_of([&] {
                 retention_backward(cpu, f, cfg, in, RetentionOutputGrads<double>{d_o_bad.cview(), {}},
                                    RetentionInputGrads<double>{dq.view(), dk.view(), dv.view(), {}});
               }),
               Catch::Contains("d_o has shape"));
  }
  // Configuration: chunk size 0, decays outside (0, 1), zero heads.
  CHECK_THAT(error_of([] { RetentionConfig bad(RetentionOptions{.chunk_size = 0}); }),
             Catch::Contains("chunk_size = 0"));
  CHECK_THAT(error_of([] { RetentionConfig bad(RetentionOptions{.chunk_size = -4}); }),
             Catch::Contains("chunk_size = -4"));
  CHECK_THAT(error_of([] {
               RetentionConfig bad(
                   RetentionOptions{.heads = 2, .decay_schedule = DecaySchedule::custom, .decays = {0.5, 1.5}});
             }),
             Catch::Contains("decay of head 1 = 1.5"));
  CHECK_THAT(error_of([] {
               RetentionConfig bad(
                   RetentionOptions{.heads = 2, .decay_schedule = DecaySchedule::custom, .decays = {0.0, 0.5}});
             }),
             Catch::Contains("decay of head 0 = 0"));
  CHECK_THAT(error_of([] { RetentionConfig bad(RetentionOptions{.heads = 0}); }), Catch::Contains("heads = 0"));
}

TEST_CASE("bad input to the decoding step") {
  const RetentionConfig cfg = make_config({1, 1, 2, 4, 6, 8, false}, Normalization::torchscale);
  Tensor<double> q({3, 2, 4}), k({3, 2, 4}), v({3, 2, 6}), kv({3, 2, 4, 6}), sc({3, 2}), o({3, 2, 6});
  Tensor<double> v_bad({3, 2, 4}), kv_bad({3, 2, 6, 4}), sc_bad({2, 3});
  auto step = [&](const Tensor<double>& vv, Tensor<double>& kvv, HostView<double> scv) {
    return error_of(
        [&] { retention_recurrent_step(cpu, cfg, q.cview(), k.cview(), vv.cview(), kvv.view(), scv, o.view()); });
  };
  CHECK(step(v, kv, sc.view()).empty());
  CHECK_THAT(step(v_bad, kv, sc.view()), Catch::Contains("retention_recurrent_step") && Catch::Contains("v has shape"));
  CHECK_THAT(step(v, kv_bad, sc.view()), Catch::Contains("state_kv has shape [3, 2, 6, 4]"));
  CHECK_THAT(step(v, kv, sc_bad.view()), Catch::Contains("state_scale has shape [2, 3]"));
  CHECK_THAT(step(v, kv, {}), Catch::Contains("state_scale is missing"));
  // Raw mode needs no scale.
  const RetentionConfig raw = cfg.with_normalization(Normalization::raw);
  CHECK(error_of([&] {
          retention_recurrent_step(cpu, raw, q.cview(), k.cview(), v.cview(), kv.view(), HostView<double>{}, o.view());
        }).empty());
}

TEST_CASE("checked mode reports a NaN with the op, tensor and position") {
  const Case c{2, 6, 2, 4, 6, 4, false};
  const RetentionConfig cfg = make_config(c, Normalization::torchscale);
  Problem<double> p = make_problem(c, 6000);
  p.q[((1 * 6 + 3) * 2 + 1) * 4 + 2] = std::nan("");
  Tensor<double> o({2, 6, 2, 6});
  {
    CheckedScope on(true);
    for (Form f : all_forms) {
      const std::string op = std::string("retention_") + name(f) + "_forward";
      CHECK_THAT(error_of([&] {
                   retention_forward(cpu, f, cfg, p.inputs(), RetentionOutputs<double>{o.view(), {}, {}});
                 }),
                 Catch::Contains(op) && Catch::Contains("non-finite") && Catch::Contains("in q at [1, 3, 1, 2]"));
    }
    Tensor<double> dq({2, 6, 2, 4}), dk({2, 6, 2, 4}), dv({2, 6, 2, 6}), d_o({2, 6, 2, 6});
    CHECK_THAT(error_of([&] {
                 retention_backward(cpu, Form::chunkwise, cfg, p.inputs(),
                                    RetentionOutputGrads<double>{d_o.cview(), {}},
                                    RetentionInputGrads<double>{dq.view(), dk.view(), dv.view(), {}});
               }),
               Catch::Contains("retention_chunkwise_backward") && Catch::Contains("in q at [1, 3, 1, 2]"));
  }
  {
    CheckedScope off(false);
    CHECK(error_of([&] {
            retention_forward(cpu, Form::chunkwise, cfg, p.inputs(), RetentionOutputs<double>{o.view(), {}, {}});
          }).empty());
  }
}
