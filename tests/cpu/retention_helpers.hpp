#pragma once
// Shared helpers of the CPU retention tests: random problems, calls of every form, naive references.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include "retnet/retnet.hpp"

namespace rtest {

using namespace retnet;

// One problem size; C is the chunk size; state: start from a random initial state.
struct Case {
  int64_t B, T, H, dk, dv, C;
  bool state;
};

inline RetentionConfig make_config(const Case& c, Normalization norm) {
  return RetentionConfig(RetentionOptions{
      .heads = c.H, .key_dim = c.dk, .value_dim = c.dv, .chunk_size = c.C, .normalization = norm, .eps = 0.0});
}

template <class Scalar>
struct Problem {
  int64_t B = 0, T = 0, H = 0, dk = 0, dv = 0;
  bool has_state = false;
  Tensor<Scalar> q, k, v, kv0, s0;

  RetentionInputs<Scalar> inputs() const {
    RetentionInputs<Scalar> in{q.cview(), k.cview(), v.cview(), {}, {}};
    if (has_state) {
      in.state_kv = kv0.cview();
      in.state_scale = s0.cview();
    }
    return in;
  }
};

inline Problem<double> make_problem(const Case& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uni(0.5, 20.0);
  Problem<double> p;
  p.B = c.B, p.T = c.T, p.H = c.H, p.dk = c.dk, p.dv = c.dv, p.has_state = c.state;
  p.q = Tensor<double>({c.B, c.T, c.H, c.dk});
  p.k = Tensor<double>({c.B, c.T, c.H, c.dk});
  p.v = Tensor<double>({c.B, c.T, c.H, c.dv});
  p.kv0 = Tensor<double>({c.B, c.H, c.dk, c.dv});
  p.s0 = Tensor<double>({c.B, c.H});
  const double kscale = 1.0 / std::sqrt(static_cast<double>(c.dk));
  for (auto& x : p.q.storage()) x = normal(rng);
  for (auto& x : p.k.storage()) x = normal(rng) * kscale;
  for (auto& x : p.v.storage()) x = normal(rng);
  for (auto& x : p.kv0.storage()) x = 0.3 * normal(rng);
  for (auto& x : p.s0.storage()) x = uni(rng);
  return p;
}

template <class To, class From>
Tensor<To> convert(const Tensor<From>& t) {
  Tensor<To> r(t.shape());
  for (int64_t i = 0; i < t.numel(); ++i) r[i] = static_cast<To>(t[i]);
  return r;
}

template <class To, class From>
Problem<To> convert(const Problem<From>& p) {
  Problem<To> r;
  r.B = p.B, r.T = p.T, r.H = p.H, r.dk = p.dk, r.dv = p.dv, r.has_state = p.has_state;
  r.q = convert<To>(p.q), r.k = convert<To>(p.k), r.v = convert<To>(p.v);
  r.kv0 = convert<To>(p.kv0), r.s0 = convert<To>(p.s0);
  return r;
}

template <class T>
struct Result {
  Tensor<T> o, kv, scale;
};

template <class T>
Result<T> forward(Form form, const RetentionConfig& cfg, const Problem<T>& p) {
  Result<T> r{Tensor<T>({p.B, p.T, p.H, p.dv}), Tensor<T>({p.B, p.H, p.dk, p.dv}), Tensor<T>({p.B, p.H})};
  retention_forward(cpu, form, cfg, p.inputs(), RetentionOutputs<T>{r.o.view(), r.kv.view(), r.scale.view()});
  return r;
}

template <class T>
struct Grads {
  Tensor<T> dq, dk, dv, dkv0;
};

template <class T>
Grads<T> backward(Form form, const RetentionConfig& cfg, const Problem<T>& p, const Tensor<T>& d_o,
                  const std::type_identity_t<Tensor<T>>* d_kv_final) {
  Grads<T> g{Tensor<T>(p.q.shape()), Tensor<T>(p.k.shape()), Tensor<T>(p.v.shape()), Tensor<T>(p.kv0.shape())};
  RetentionOutputGrads<T> gout{d_o.cview(), {}};
  if (d_kv_final) gout.d_state_kv = d_kv_final->cview();
  retention_backward(cpu, form, cfg, p.inputs(), gout,
                     RetentionInputGrads<T>{g.dq.view(), g.dk.view(), g.dv.view(), g.dkv0.view()});
  return g;
}

// max |a - b| / max(|b|, floor) over all elements (floor: the largest |b|, i.e. relative to the tensor).
template <class A, class B>
double max_rel_diff(const Tensor<A>& a, const Tensor<B>& b) {
  double scale = 0, worst = 0;
  for (int64_t i = 0; i < b.numel(); ++i) scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  for (int64_t i = 0; i < b.numel(); ++i)
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return scale > 0 ? worst / scale : worst;
}

// The largest max_rel_diff over the four gradients (q, k, v, initial state).
template <class T>
double max_rel_diff(const Grads<T>& a, const Grads<T>& b) {
  return std::max(
      {max_rel_diff(a.dq, b.dq), max_rel_diff(a.dk, b.dk), max_rel_diff(a.dv, b.dv), max_rel_diff(a.dkv0, b.dkv0)});
}

// Per (batch, position, head) RMS normalisation of o [B, T, H, dv] with epsilon 0, in double.
template <class T>
Tensor<double> rms_normalised(const Tensor<T>& o) {
  const int64_t dv = o.size(3), rows = o.numel() / dv;
  Tensor<double> r(o.shape());
  for (int64_t i = 0; i < rows; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < dv; ++j) ss += static_cast<double>(o[i * dv + j]) * static_cast<double>(o[i * dv + j]);
    const double inv = ss > 0 ? 1.0 / std::sqrt(ss / static_cast<double>(dv)) : 0.0;
    for (int64_t j = 0; j < dv; ++j) r[i * dv + j] = static_cast<double>(o[i * dv + j]) * inv;
  }
  return r;
}

// max |a - b| of two normalised outputs (each row has RMS 1, so this is relative).
inline double max_abs_diff(const Tensor<double>& a, const Tensor<double>& b) {
  double worst = 0;
  for (int64_t i = 0; i < a.numel(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

// Naive raw retention in double from the raw initial state U0 [B, H, dk, dv]:
//   r_n = sum_{m<=n} gamma^(n-m) (q_n . k_m) v_m + gamma^(n+1) q_n U0,   U_final = gamma^T U0 + sum ...
struct RawRef {
  Tensor<double> r, U;
};

inline RawRef raw_reference(const std::vector<double>& gammas, const Tensor<double>& q, const Tensor<double>& k,
                            const Tensor<double>& v, const Tensor<double>& U0) {
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), dk = q.size(3), dv = v.size(3);
  RawRef ref{Tensor<double>({B, T, H, dv}), Tensor<double>({B, H, dk, dv})};
  auto Q = [&](int64_t b, int64_t n, int64_t h, int64_t i) { return q[((b * T + n) * H + h) * dk + i]; };
  auto K = [&](int64_t b, int64_t n, int64_t h, int64_t i) { return k[((b * T + n) * H + h) * dk + i]; };
  auto V = [&](int64_t b, int64_t n, int64_t h, int64_t j) { return v[((b * T + n) * H + h) * dv + j]; };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const double g = gammas[static_cast<size_t>(h)];
      const double* u0 = U0.data() + (b * H + h) * dk * dv;
      for (int64_t n = 0; n < T; ++n) {
        double* r = ref.r.data() + ((b * T + n) * H + h) * dv;
        for (int64_t m = 0; m <= n; ++m) {
          double s = 0;
          for (int64_t i = 0; i < dk; ++i) s += Q(b, n, h, i) * K(b, m, h, i);
          s *= std::pow(g, static_cast<double>(n - m));
          for (int64_t j = 0; j < dv; ++j) r[j] += s * V(b, m, h, j);
        }
        const double gn = std::pow(g, static_cast<double>(n + 1));
        for (int64_t i = 0; i < dk; ++i)
          for (int64_t j = 0; j < dv; ++j) r[j] += gn * Q(b, n, h, i) * u0[i * dv + j];
      }
      double* U = ref.U.data() + (b * H + h) * dk * dv;
      for (int64_t i = 0; i < dk; ++i)
        for (int64_t j = 0; j < dv; ++j) {
          double s = std::pow(g, static_cast<double>(T)) * u0[i * dv + j];
          for (int64_t m = 0; m < T; ++m)
            s += std::pow(g, static_cast<double>(T - 1 - m)) * K(b, m, h, i) * V(b, m, h, j);
          U[i * dv + j] = s;
        }
    }
  return ref;
}

// The raw initial state U0 of a problem under a normalisation (kv0 sqrt(s0) in torchscale mode).
inline Tensor<double> raw_initial_state(const Problem<double>& p, Normalization norm) {
  Tensor<double> U0(p.kv0.shape());
  if (!p.has_state) return U0;
  const int64_t per = p.dk * p.dv;
  for (int64_t i = 0; i < U0.numel(); ++i)
    U0[i] = norm == Normalization::torchscale ? p.kv0[i] * std::sqrt(p.s0[i / per]) : p.kv0[i];
  return U0;
}

// torchscale's running decay sum after T tokens from s0.
inline double final_scale(double s0, double gamma, int64_t T) {
  double s = s0;
  for (int64_t n = 0; n < T; ++n) s = s * gamma + 1.0;
  return s;
}

inline Tensor<double> random_like(const Shape& shape, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  Tensor<double> t(shape);
  for (auto& x : t.storage()) x = normal(rng);
  return t;
}

// Copies rows [n0, n0 + len) of a [B, T, H, D] tensor.
template <class T>
Tensor<T> slice_time(const Tensor<T>& x, int64_t n0, int64_t len) {
  const int64_t B = x.size(0), Tn = x.size(1), row = x.size(2) * x.size(3);
  Tensor<T> r({B, len, x.size(2), x.size(3)});
  for (int64_t b = 0; b < B; ++b) std::copy_n(x.data() + (b * Tn + n0) * row, len * row, r.data() + b * len * row);
  return r;
}

template <class T>
void paste_time(Tensor<T>& dst, const Tensor<T>& src, int64_t n0) {
  const int64_t B = dst.size(0), Tn = dst.size(1), len = src.size(1), row = dst.size(2) * dst.size(3);
  for (int64_t b = 0; b < B; ++b) std::copy_n(src.data() + b * len * row, len * row, dst.data() + (b * Tn + n0) * row);
}

inline const char* name(Form f) { return to_string(f); }
inline constexpr Form all_forms[] = {Form::parallel, Form::recurrent, Form::chunkwise};

}  // namespace rtest
