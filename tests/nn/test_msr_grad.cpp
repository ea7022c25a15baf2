// The multi-scale retention layer alone: finite-difference gradients (double) of the input, every weight
// and the initial recurrent state, with rows at different absolute positions and a final-state gradient.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "retnet/nn/msr.hpp"

using namespace retnet;

namespace {

struct MsrCase {
  int64_t B = 2, T = 5, d = 8, H = 2, dv = 3;
  MsrDims dm() const { return {B, T, d, H, d / H, dv}; }
  RetentionConfig rc() const {
    RetentionOptions o;
    o.heads = H;
    o.key_dim = d / H;
    o.value_dim = dv;
    o.chunk_size = 2;
    o.eps = 0;
    return RetentionConfig(o);
  }
};

struct Buffers {
  std::vector<double> q, k, v, g, o, z, r;
  explicit Buffers(const MsrDims& m)
      : q(static_cast<size_t>(m.rows() * m.d)),
        k(q.size()),
        v(static_cast<size_t>(m.rows() * m.vd())),
        g(v.size()),
        o(v.size()),
        z(v.size()),
        r(static_cast<size_t>(m.rows() * m.heads)) {}
  MsrSaved<double> saved() { return {q.data(), k.data(), v.data(), g.data(), o.data(), z.data(), r.data()}; }
};

}  // namespace

TEST_CASE("MSR layer gradients (input, weights, initial state) match finite differences", "[nn][grad][msr]") {
  const MsrCase c;
  const MsrDims dm = c.dm();
  const RetentionConfig rc = c.rc();
  const int64_t N = dm.rows(), d = dm.d, Vd = dm.vd(), kvn = c.B * c.H * dm.dk * dm.dv;
  std::mt19937_64 gen(5);
  std::normal_distribution<double> nd(0.0, 0.5);
  auto randv = [&](int64_t n) {
    std::vector<double> v(static_cast<size_t>(n));
    for (double& e : v) e = nd(gen);
    return v;
  };
  std::vector<double> x = randv(N * d), wq = randv(d * d), wk = randv(d * d), wv = randv(Vd * d), wg = randv(Vd * d),
                      wo = randv(d * Vd), kv0 = randv(kvn), R = randv(N * d), S = randv(kvn);
  std::vector<double> sc0 = {3.5, 7.0, 1.0, 2.5};  // [B, H] torchscale decay sums of the history
  const std::vector<int64_t> starts = {3, 11};     // each row continues at its own absolute position
  RotationTable<double> table(dm.dk, 0, 11 + c.T);
  const RotationRows<double> rot{table.sin.data(), table.cos.data(), starts.data()};
  for (Form form : {Form::chunkwise, Form::recurrent, Form::parallel}) {
    INFO(to_string(form));
    auto loss = [&]() {
      Buffers b(dm);
      std::vector<double> out(static_cast<size_t>(N * d), 0.0), kv1(static_cast<size_t>(kvn)), sc1(4);
      msr_forward(cpu, rc, form, 0.0, dm, MsrWeights<double>{wq.data(), wk.data(), wv.data(), wg.data(), wo.data()},
                  x.data(), b.saved(), out.data(), rot, StatePtrs<double>{kv0.data(), sc0.data()},
                  StatePtrs<double>{kv1.data(), sc1.data()});
      double l = 0;
      for (size_t i = 0; i < out.size(); ++i) l += out[i] * R[i];
      for (size_t i = 0; i < kv1.size(); ++i) l += kv1[i] * S[i];
      return l;
    };
    Buffers b(dm);
    std::vector<double> out(static_cast<size_t>(N * d), 0.0);
    const MsrWeights<double> w{wq.data(), wk.data(), wv.data(), wg.data(), wo.data()};
    msr_forward(cpu, rc, form, 0.0, dm, w, x.data(), b.saved(), out.data(), rot,
                StatePtrs<double>{kv0.data(), sc0.data()});
    std::vector<double> gq(wq.size()), gk(wk.size()), gv(wv.size()), gg(wg.size()), go(wo.size()), dx(x.size()),
        dkv0(static_cast<size_t>(kvn)), s1(static_cast<size_t>(N * d)), s2(s1.size()), s3(static_cast<size_t>(N * Vd)),
        s4(s3.size()), s5(s3.size()), s6(s3.size());
    msr_backward(cpu, rc, form, 0.0, dm, w, MsrGrads<double>{gq.data(), gk.data(), gv.data(), gg.data(), go.data()},
                 x.data(), b.saved(),
                 MsrScratch<double>{s1.data(), s2.data(), s3.data(), s4.data(), s5.data(), s6.data()}, R.data(),
                 dx.data(), rot, StatePtrs<double>{kv0.data(), sc0.data()}, S.data(), dkv0.data());
    auto check = [&](std::vector<double>& p, const std::vector<double>& grad, const char* name) {
      INFO(name);
      for (size_t i = 0; i < p.size(); i += 1 + p.size() / 17) {
        const double p0 = p[i], h = 1e-6;
        p[i] = p0 + h;
        const double lp = loss();
        p[i] = p0 - h;
        const double lm = loss();
        p[i] = p0;
        CHECK(grad[i] == Approx((lp - lm) / (2 * h)).epsilon(1e-6).margin(1e-7));
      }
    };
    check(x, dx, "x");
    check(wq, gq, "q_proj");
    check(wk, gk, "k_proj");
    check(wv, gv, "v_proj");
    check(wg, gg, "g_proj");
    check(wo, go, "out_proj");
    check(kv0, dkv0, "initial state");

    // With z shared by the layers (MsrSaved::recompute, the GPU model's choice) the backward recomputes it from the
    // saved o and g: the same gradients, bit for bit, whatever the buffer held.
    std::fill(b.z.begin(), b.z.end(), std::nan(""));
    MsrSaved<double> shared = b.saved();
    shared.recompute = true;
    std::vector<double> gq2(wq.size()), gk2(wk.size()), gv2(wv.size()), gg2(wg.size()), go2(wo.size()), dx2(x.size()),
        dkv2(dkv0.size());
    msr_backward(cpu, rc, form, 0.0, dm, w,
                 MsrGrads<double>{gq2.data(), gk2.data(), gv2.data(), gg2.data(), go2.data()}, x.data(), shared,
                 MsrScratch<double>{s1.data(), s2.data(), s3.data(), s4.data(), s5.data(), s6.data()}, R.data(),
                 dx2.data(), rot, StatePtrs<double>{kv0.data(), sc0.data()}, S.data(), dkv2.data());
    CHECK(dx2 == dx);
    CHECK(gq2 == gq);
    CHECK(gk2 == gk);
    CHECK(gv2 == gv);
    CHECK(gg2 == gg);
    CHECK(go2 == go);
    CHECK(dkv2 == dkv0);
  }
}
