#pragma once
// Retention on the CPU (Eigen + OpenMP): the parallel, recurrent and chunkwise forms, forward and backward,
// and the single decoding step. The exact math is docs/SEMANTICS.md; the layouts are in
// retnet/core/retention_args.hpp.
//
// Work is split over (batch, head) pairs with OpenMP; inside a pair every product is an Eigen GEMM on
// row-major maps over the [B, T, H, D] buffers (outer stride H * D), which Eigen runs single-threaded inside
// the parallel region. Everything accumulates in T (float or double).
//
// Aliasing: the final state may be written over the initial state (same buffers), and the backward pass's
// d_state_kv of the initial state may overwrite the incoming gradient of the final state; nothing else may
// alias.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "retnet/core/backend.hpp"
#include "retnet/core/checked.hpp"
#include "retnet/core/config.hpp"
#include "retnet/core/error.hpp"
#include "retnet/core/retention_args.hpp"
#include "retnet/core/tensor.hpp"
#include "retnet/cpu/eigen.hpp"

namespace retnet {

namespace detail::cpu_retention {

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
template <class T>
using ConstRows = Eigen::Map<const Mat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using Rows = Eigen::Map<Mat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using ConstRow = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>;
template <class T>
using Row = Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>;

// S_n = sum_{j=0..n} gamma^j = (1 - gamma^(n+1)) / (1 - gamma), accurate for gamma near 1.
inline double decay_sum(double log_gamma, int64_t n) {
  return std::expm1(static_cast<double>(n + 1) * log_gamma) / std::expm1(log_gamma);
}
// torchscale's running decay sum after row n of a segment that starts from s0.
inline double scale_at(double s0, double log_gamma, int64_t n) {
  return s0 * std::exp(static_cast<double>(n + 1) * log_gamma) + decay_sum(log_gamma, n);
}

// Where the rows of one (batch, head) pair live in the [B, T, H, D] buffers.
struct Layout {
  int64_t B, T, H, dk, dv;
  int64_t qk(int64_t b, int64_t n, int64_t h) const { return ((b * T + n) * H + h) * dk; }
  int64_t vo(int64_t b, int64_t n, int64_t h) const { return ((b * T + n) * H + h) * dv; }
  int64_t state(int64_t b, int64_t h) const { return (b * H + h) * dk * dv; }
};

inline Layout layout_of(const RetentionDims& d) { return {d.batch, d.length, d.heads, d.key_dim, d.value_dim}; }

template <class T>
ConstRows<T> rows(const T* base, int64_t offset, int64_t len, int64_t width, int64_t heads) {
  return ConstRows<T>(base + offset, len, width, Eigen::OuterStride<>(heads * width));
}
template <class T>
Rows<T> rows(T* base, int64_t offset, int64_t len, int64_t width, int64_t heads) {
  return Rows<T>(base + offset, len, width, Eigen::OuterStride<>(heads * width));
}

// Asks the hardware to start loading rows [n0, n0 + len) of one head (the next chunk while this one computes).
// Rows that will be written (for_write) are fetched for ownership.
template <bool for_write = false, class T>
inline void prefetch_rows(const T* base, int64_t offset, int64_t len, int64_t width, int64_t heads) {
#if defined(__GNUC__)
  const char* p = reinterpret_cast<const char*>(base + offset);
  const int64_t stride = heads * width * static_cast<int64_t>(sizeof(T));
  const int64_t bytes = width * static_cast<int64_t>(sizeof(T));
  for (int64_t r = 0; r < len; ++r, p += stride)
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, for_write ? 1 : 0);
#else
  (void)base, (void)offset, (void)len, (void)width, (void)heads;
#endif
}

// The initial state of one pair as a raw U0 (dk x dv), and s0 (0 in raw mode or without a state).
template <class T>
struct InitialState {
  bool present = false;
  double s0 = 0.0;
  Mat<T> U0;
};

template <class T>
InitialState<T> initial_state(const RetentionConfig& cfg, const Layout& l, const HostView<const T>& kv,
                              const HostView<const T>& scale, int64_t b, int64_t h) {
  InitialState<T> st;
  st.U0 = Mat<T>::Zero(l.dk, l.dv);
  if (kv.empty()) return st;
  st.present = true;
  Eigen::Map<const Mat<T>> kv0(kv.data() + l.state(b, h), l.dk, l.dv);
  if (cfg.normalization() == Normalization::torchscale) {
    st.s0 = static_cast<double>(scale.data()[b * l.H + h]);
    st.U0 = kv0 * static_cast<T>(std::sqrt(st.s0));
  } else {
    st.U0 = kv0;
  }
  return st;
}

// Writes the final state (kv = U / sqrt(scale) in torchscale mode, U in raw mode) and its scale.
template <class T>
void write_final_state(const RetentionConfig& cfg, const Layout& l, const HostView<T>& kv, const HostView<T>& scale,
                       int64_t b, int64_t h, const Mat<T>& U, double final_scale) {
  if (!kv.empty()) {
    Eigen::Map<Mat<T>> out(kv.data() + l.state(b, h), l.dk, l.dv);
    if (cfg.normalization() == Normalization::torchscale)
      out = U * static_cast<T>(1.0 / std::sqrt(final_scale));
    else
      out = U;
  }
  if (!scale.empty()) scale.data()[b * l.H + h] = static_cast<T>(final_scale);
}

// Gradient of the raw final state U_{T-1} from the gradient of the stored final state.
template <class T>
Mat<T> final_state_grad(const RetentionConfig& cfg, const Layout& l, const HostView<const T>& d_kv, int64_t b,
                        int64_t h, double final_scale) {
  if (d_kv.empty()) return Mat<T>::Zero(l.dk, l.dv);
  Eigen::Map<const Mat<T>> g(d_kv.data() + l.state(b, h), l.dk, l.dv);
  if (cfg.normalization() == Normalization::torchscale) return g * static_cast<T>(1.0 / std::sqrt(final_scale));
  return g;
}

// Writes d kv0 from dU_{-1} (the gradient of the raw initial state U0 = kv0 sqrt(s0)).
template <class T>
void write_initial_state_grad(const RetentionConfig& cfg, const Layout& l, const HostView<T>& d_kv, int64_t b,
                              int64_t h, const Mat<T>& dU0, double s0) {
  if (d_kv.empty()) return;
  Eigen::Map<Mat<T>> out(d_kv.data() + l.state(b, h), l.dk, l.dv);
  if (cfg.normalization() == Normalization::torchscale)
    out = dU0 * static_cast<T>(std::sqrt(s0));
  else
    out = dU0;
}

template <class T>
void check_scale_values(const char* op, const RetentionConfig& cfg, const HostView<const T>& scale) {
  if (cfg.normalization() != Normalization::torchscale || scale.empty()) return;
  const int64_t n = scale.numel();
  for (int64_t i = 0; i < n; ++i) {
    const double s = static_cast<double>(scale.data()[i]);
    require(std::isfinite(s) && s >= 0.0, op, ": state_scale[", i / scale.size(1), ", ", i % scale.size(1), "] = ", s,
            " is invalid; torchscale's running decay sum must be finite and >= 0");
  }
}

template <class T>
void check_inputs(const char* op, const RetentionInputs<T>& in) {
  if (!checked()) return;
  check_finite(op, "q", in.q);
  check_finite(op, "k", in.k);
  check_finite(op, "v", in.v);
  check_finite(op, "state_kv", in.state_kv);
  check_finite(op, "state_scale", in.state_scale);
}

template <class T>
void check_outputs(const char* op, const RetentionOutputs<T>& out) {
  if (!checked()) return;
  check_finite(op, "o", out.o);
  check_finite(op, "state_kv (out)", out.state_kv);
  check_finite(op, "state_scale (out)", out.state_scale);
}

template <class T>
void check_grads_in(const char* op, const RetentionOutputGrads<T>& g) {
  if (!checked()) return;
  check_finite(op, "d_o", g.d_o);
  check_finite(op, "d_state_kv (of the final state)", g.d_state_kv);
}

template <class T>
void check_grads_out(const char* op, const RetentionInputGrads<T>& g) {
  if (!checked()) return;
  check_finite(op, "dq", g.dq);
  check_finite(op, "dk", g.dk);
  check_finite(op, "dv", g.dv);
  check_finite(op, "d_state_kv (of the initial state)", g.d_state_kv);
}

// Runs f(b, h) for every (batch, head) pair, spread over the OpenMP threads when there is enough work to
// pay for a parallel region (roughly 10 MFLOP; a decoding step stays on the caller's thread: on a busy machine a
// parallel region can cost milliseconds).
template <class F>
void for_each_pair(const Layout& l, F&& f) {
  const int64_t pairs = l.B * l.H;
  const bool big = pairs > 1 && pairs * l.T * (l.dk + 16) * (l.dv + 16) >= (int64_t{1} << 22);
#pragma omp parallel for schedule(dynamic, 1) if (big)
  for (int64_t p = 0; p < pairs; ++p) f(p / l.H, p % l.H);
}

// ---- chunkwise ------------------------------------------------------------------------------------------

// Per-head tables for chunk size C (Ce = min(C, T) rows are ever used).
template <class T>
struct ChunkTables {
  Mat<T> mask;              // [Ce, Ce]: gamma^(i-j) for i >= j, else 0
  Vec<T> b;                 // [Ce]: gamma^(i+1)
  Vec<T> d;                 // [Ce]: gamma^(Ce-1-j); a chunk of length L uses the last L entries
  Vec<T> inv_sqrt_S;        // [Ce]: 1 / sqrt(S_i)
  double inv_S_last = 1.0;  // 1 / S_{C-1} with the configured C
  double gamma = 0, log_gamma = 0;
};

template <class T>
std::vector<ChunkTables<T>> chunk_tables(const RetentionConfig& cfg, int64_t T_len) {
  const int64_t C = cfg.chunk_size(), Ce = std::min(C, T_len);
  std::vector<ChunkTables<T>> tabs(static_cast<size_t>(cfg.heads()));
  for (int64_t h = 0; h < cfg.heads(); ++h) {
    ChunkTables<T>& t = tabs[static_cast<size_t>(h)];
    const double lg = cfg.log_gammas()[static_cast<size_t>(h)];
    t.gamma = cfg.gammas()[static_cast<size_t>(h)];
    t.log_gamma = lg;
    t.mask = Mat<T>::Zero(Ce, Ce);
    t.b.resize(Ce);
    t.d.resize(Ce);
    t.inv_sqrt_S.resize(Ce);
    std::vector<double> pw(static_cast<size_t>(Ce + 1));
    for (int64_t i = 0; i <= Ce; ++i) pw[static_cast<size_t>(i)] = std::exp(static_cast<double>(i) * lg);
    for (int64_t i = 0; i < Ce; ++i) {
      for (int64_t j = 0; j <= i; ++j) t.mask(i, j) = static_cast<T>(pw[static_cast<size_t>(i - j)]);
      t.b(i) = static_cast<T>(pw[static_cast<size_t>(i + 1)]);
      t.d(i) = static_cast<T>(std::exp(static_cast<double>(Ce - 1 - i) * lg));
      t.inv_sqrt_S(i) = static_cast<T>(1.0 / std::sqrt(decay_sum(lg, i)));
    }
    t.inv_S_last = 1.0 / decay_sum(lg, C - 1);
  }
  return tabs;
}

// torchscale chunkwise multipliers of the rows of one chunk: A is the masked score block, U the raw state
// entering the chunk.
template <class T, class ABlock>
void chunk_multipliers(const ChunkTables<T>& t, const ABlock& A, const Mat<T>& U, bool state_nonzero, int64_t L,
                       Vec<T>& mu) {
  double kvscale = 1.0;
  if (state_nonzero)
    kvscale = std::max(1.0, static_cast<double>(U.cwiseAbs().colwise().sum().maxCoeff()) * t.inv_S_last);
  for (int64_t i = 0; i < L; ++i) {
    const double is = static_cast<double>(t.inv_sqrt_S(i));
    const double inner = std::max(static_cast<double>(A.row(i).cwiseAbs().sum()) * is, 1.0);
    mu(i) = static_cast<T>(is / std::max(inner, kvscale));
  }
}

template <class T>
void chunkwise_forward(const RetentionConfig& cfg, const RetentionDims& dims, const RetentionInputs<T>& in,
                       const RetentionOutputs<T>& out) {
  const Layout l = layout_of(dims);
  const bool ts = cfg.normalization() == Normalization::torchscale;
  const int64_t C = cfg.chunk_size(), Ce = std::min(C, l.T), nchunks = (l.T + C - 1) / C;
  const std::vector<ChunkTables<T>> tabs = chunk_tables<T>(cfg, l.T);
  const bool want_state = !out.state_kv.empty();
  for_each_pair(l, [&](int64_t b, int64_t h) {
    const ChunkTables<T>& t = tabs[static_cast<size_t>(h)];
    InitialState<T> st = initial_state(cfg, l, in.state_kv, in.state_scale, b, h);
    Mat<T>& U = st.U0;
    Mat<T> A(Ce, Ce), R(Ce, l.dv), X(Ce, std::max(l.dk, l.dv));
    Vec<T> mu = Vec<T>::Ones(Ce);
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t n0 = c * C, L = std::min(C, l.T - n0);
      const bool state_nonzero = st.present || c > 0;
      const ConstRows<T> Q = rows(in.q.data(), l.qk(b, n0, h), L, l.dk, l.H);
      const ConstRows<T> K = rows(in.k.data(), l.qk(b, n0, h), L, l.dk, l.H);
      const ConstRows<T> V = rows(in.v.data(), l.vo(b, n0, h), L, l.dv, l.H);
      Rows<T> O = rows(out.o.data(), l.vo(b, n0, h), L, l.dv, l.H);
      if (c + 1 < nchunks) {
        const int64_t Ln = std::min(C, l.T - n0 - C);
        prefetch_rows(in.q.data(), l.qk(b, n0 + C, h), Ln, l.dk, l.H);
        prefetch_rows(in.k.data(), l.qk(b, n0 + C, h), Ln, l.dk, l.H);
        prefetch_rows(in.v.data(), l.vo(b, n0 + C, h), Ln, l.dv, l.H);
        prefetch_rows<true>(out.o.data(), l.vo(b, n0 + C, h), Ln, l.dv, l.H);
      }
      auto Ab = A.topLeftCorner(L, L);
      auto Rb = R.topRows(L);
      Ab.noalias() = Q * K.transpose();
      Ab.array() *= t.mask.topLeftCorner(L, L).array();
      Rb.noalias() = Ab * V;
      if (state_nonzero) {
        auto Qb = X.topLeftCorner(L, l.dk);
        Qb.noalias() = t.b.head(L).asDiagonal() * Q;
        Rb.noalias() += Qb * U;
      }
      if (ts) {
        chunk_multipliers(t, Ab, U, state_nonzero, L, mu);
        O.noalias() = mu.head(L).asDiagonal() * Rb;
      } else {
        O = Rb;
      }
      if (c + 1 < nchunks || want_state) {
        auto Vd = X.topLeftCorner(L, l.dv);
        Vd.noalias() = t.d.tail(L).asDiagonal() * V;
        U *= static_cast<T>(std::exp(static_cast<double>(L) * t.log_gamma));
        U.noalias() += K.transpose() * Vd;
      }
    }
    write_final_state(cfg, l, out.state_kv, out.state_scale, b, h, U, scale_at(st.s0, t.log_gamma, l.T - 1));
  });
}

template <class T>
void chunkwise_backward(const RetentionConfig& cfg, const RetentionDims& dims, const RetentionInputs<T>& in,
                        const RetentionOutputGrads<T>& gout, const RetentionInputGrads<T>& gin) {
  const Layout l = layout_of(dims);
  const bool ts = cfg.normalization() == Normalization::torchscale;
  const int64_t C = cfg.chunk_size(), Ce = std::min(C, l.T), nchunks = (l.T + C - 1) / C;
  const std::vector<ChunkTables<T>> tabs = chunk_tables<T>(cfg, l.T);
  for_each_pair(l, [&](int64_t b, int64_t h) {
    const ChunkTables<T>& t = tabs[static_cast<size_t>(h)];
    const InitialState<T> st = initial_state(cfg, l, in.state_kv, in.state_scale, b, h);
    const T gamma_C = static_cast<T>(std::exp(static_cast<double>(C) * t.log_gamma));
    // Forward sweep: the raw state entering every chunk.
    Mat<T> states(nchunks * l.dk, l.dv);
    Mat<T> X(Ce, std::max(l.dk, l.dv)), Y(Ce, std::max(l.dk, l.dv));
    states.topRows(l.dk) = st.U0;
    for (int64_t c = 0; c + 1 < nchunks; ++c) {
      const int64_t n0 = c * C;  // every chunk but the last is full
      const ConstRows<T> K = rows(in.k.data(), l.qk(b, n0, h), C, l.dk, l.H);
      const ConstRows<T> V = rows(in.v.data(), l.vo(b, n0, h), C, l.dv, l.H);
      auto Vd = X.topLeftCorner(C, l.dv);
      Vd.noalias() = t.d.asDiagonal() * V;
      auto next = states.middleRows((c + 1) * l.dk, l.dk);
      next = states.middleRows(c * l.dk, l.dk) * gamma_C;
      next.noalias() += K.transpose() * Vd;
    }
    // Reverse sweep.
    Mat<T> dU = final_state_grad(cfg, l, gout.d_state_kv, b, h, scale_at(st.s0, t.log_gamma, l.T - 1));
    Mat<T> A(Ce, Ce), P(Ce, Ce), G(Ce, l.dv), U(l.dk, l.dv);
    Vec<T> mu = Vec<T>::Ones(Ce);
    for (int64_t c = nchunks - 1; c >= 0; --c) {
      const int64_t n0 = c * C, L = std::min(C, l.T - n0);
      const bool state_nonzero = st.present || c > 0;
      U = states.middleRows(c * l.dk, l.dk);
      const ConstRows<T> Q = rows(in.q.data(), l.qk(b, n0, h), L, l.dk, l.H);
      const ConstRows<T> K = rows(in.k.data(), l.qk(b, n0, h), L, l.dk, l.H);
      const ConstRows<T> V = rows(in.v.data(), l.vo(b, n0, h), L, l.dv, l.H);
      const ConstRows<T> dO = rows(gout.d_o.data(), l.vo(b, n0, h), L, l.dv, l.H);
      Rows<T> dQ = rows(gin.dq.data(), l.qk(b, n0, h), L, l.dk, l.H);
      Rows<T> dK = rows(gin.dk.data(), l.qk(b, n0, h), L, l.dk, l.H);
      Rows<T> dV = rows(gin.dv.data(), l.vo(b, n0, h), L, l.dv, l.H);
      if (c > 0) {  // the previous chunk is next, and full
        const int64_t np = n0 - C;
        prefetch_rows(in.q.data(), l.qk(b, np, h), C, l.dk, l.H);
        prefetch_rows(in.k.data(), l.qk(b, np, h), C, l.dk, l.H);
        prefetch_rows(in.v.data(), l.vo(b, np, h), C, l.dv, l.H);
        prefetch_rows(gout.d_o.data(), l.vo(b, np, h), C, l.dv, l.H);
        prefetch_rows<true>(gin.dq.data(), l.qk(b, np, h), C, l.dk, l.H);
        prefetch_rows<true>(gin.dk.data(), l.qk(b, np, h), C, l.dk, l.H);
        prefetch_rows<true>(gin.dv.data(), l.vo(b, np, h), C, l.dv, l.H);
      }
      auto Ab = A.topLeftCorner(L, L);
      auto Pb = P.topLeftCorner(L, L);
      auto Gb = G.topRows(L);
      const auto mask = t.mask.topLeftCorner(L, L);
      Ab.noalias() = Q * K.transpose();
      Ab.array() *= mask.array();
      if (ts) {
        chunk_multipliers(t, Ab, U, state_nonzero, L, mu);
        Gb.noalias() = mu.head(L).asDiagonal() * dO;
      } else {
        Gb = dO;
      }
      Pb.noalias() = Gb * V.transpose();
      Pb.array() *= mask.array();
      dQ.noalias() = Pb * K;
      if (state_nonzero) {
        auto Gbb = X.topLeftCorner(L, l.dv);
        Gbb.noalias() = t.b.head(L).asDiagonal() * Gb;
        dQ.noalias() += Gbb * U.transpose();
      }
      const auto dd = t.d.tail(L).asDiagonal();
      dK.noalias() = Pb.transpose() * Q;
      auto Vd = Y.topLeftCorner(L, l.dv);
      Vd.noalias() = dd * V;
      dK.noalias() += Vd * dU.transpose();
      dV.noalias() = Ab.transpose() * Gb;
      auto Kd = Y.topLeftCorner(L, l.dk);
      Kd.noalias() = dd * K;
      dV.noalias() += Kd * dU;
      dU *= static_cast<T>(std::exp(static_cast<double>(L) * t.log_gamma));
      auto Qb = X.topLeftCorner(L, l.dk);
      Qb.noalias() = t.b.head(L).asDiagonal() * Q;
      dU.noalias() += Qb.transpose() * Gb;
    }
    write_initial_state_grad(cfg, l, gin.d_state_kv, b, h, dU, st.s0);
  });
}

// ---- recurrent -------------------------------------------------------------------------------------------

template <class T>
void recurrent_forward(const RetentionConfig& cfg, const RetentionDims& dims, const RetentionInputs<T>& in,
                       const RetentionOutputs<T>& out) {
  const Layout l = layout_of(dims);
  const bool ts = cfg.normalization() == Normalization::torchscale;
  for_each_pair(l, [&](int64_t b, int64_t h) {
    const double lg = cfg.log_gammas()[static_cast<size_t>(h)];
    const T gamma = static_cast<T>(cfg.gammas()[static_cast<size_t>(h)]);
    InitialState<T> st = initial_state(cfg, l, in.state_kv, in.state_scale, b, h);
    Mat<T>& U = st.U0;
    for (int64_t n = 0; n < l.T; ++n) {
      const ConstRow<T> q(in.q.data() + l.qk(b, n, h), l.dk), k(in.k.data() + l.qk(b, n, h), l.dk);
      const ConstRow<T> v(in.v.data() + l.vo(b, n, h), l.dv);
      Row<T> o(out.o.data() + l.vo(b, n, h), l.dv);
      U *= gamma;
      U.noalias() += k.transpose() * v;
      o.noalias() = q * U;
      if (ts) o *= static_cast<T>(1.0 / std::sqrt(scale_at(st.s0, lg, n)));
    }
    write_final_state(cfg, l, out.state_kv, out.state_scale, b, h, U, scale_at(st.s0, lg, l.T - 1));
  });
}

template <class T>
void recurrent_backward(const RetentionConfig& cfg, const RetentionDims& dims, const RetentionInputs<T>& in,
                        const RetentionOutputGrads<T>& gout, const RetentionInputGrads<T>& gin) {
  const Layout l = layout_of(dims);
  const bool ts = cfg.normalization() == Normalization::torchscale;
  for_each_pair(l, [&](int64_t b, int64_t h) {
    const double lg = cfg.log_gammas()[static_cast<size_t>(h)];
    const T gamma = static_cast<T>(cfg.gammas()[static_cast<size_t>(h)]);
    const InitialState<T> st = initial_state(cfg, l, in.state_kv, in.state_scale, b, h);
    auto mu = [&](int64_t n) { return ts ? static_cast<T>(1.0 / std::sqrt(scale_at(st.s0, lg, n))) : T(1); };
    Eigen::Matrix<T, 1, Eigen::Dynamic> g(l.dv);
    // Forward sweep: dq_n = g_n U_n^T needs only the forward states.
    Mat<T> U = st.U0;
    for (int64_t n = 0; n < l.T; ++n) {
      const ConstRow<T> k(in.k.data() + l.qk(b, n, h), l.dk), v(in.v.data() + l.vo(b, n, h), l.dv);
      const ConstRow<T> dO(gout.d_o.data() + l.vo(b, n, h), l.dv);
      Row<T> dq(gin.dq.data() + l.qk(b, n, h), l.dk);
      U *= gamma;
      U.noalias() += k.transpose() * v;
      g = dO * mu(n);
      dq.noalias() = g * U.transpose();
    }
    // Reverse sweep: dU_n = gamma dU_{n+1} + q_n^T g_n.
    Mat<T> dU = final_state_grad(cfg, l, gout.d_state_kv, b, h, scale_at(st.s0, lg, l.T - 1));
    for (int64_t n = l.T - 1; n >= 0; --n) {
      const ConstRow<T> q(in.q.data() + l.qk(b, n, h), l.dk), k(in.k.data() + l.qk(b, n, h), l.dk);
      const ConstRow<T> v(in.v.data() + l.vo(b, n, h), l.dv);
      const ConstRow<T> dO(gout.d_o.data() + l.vo(b, n, h), l.dv);
      Row<T> dk(gin.dk.data() + l.qk(b, n, h), l.dk), dv(gin.dv.data() + l.vo(b, n, h), l.dv);
      if (n < l.T - 1) dU *= gamma;
      g = dO * mu(n);
      dU.noalias() += q.transpose() * g;
      dk.noalias() = v * dU.transpose();
      dv.noalias() = k * dU;
    }
    dU *= gamma;  // gradient of U_{-1} = U0
    write_initial_state_grad(cfg, l, gin.d_state_kv, b, h, dU, st.s0);
  });
}

// ---- parallel --------------------------------------------------------------------------------------------
// Blocked over (row block, column block) pairs of the lower triangle, so memory stays O(block^2) per thread.

inline constexpr int64_t parallel_block = 64;

// P(i, j) *= gamma^(n - m) for n = n0 + i >= m = m0 + j, else 0; pw[k] = gamma^k.
template <class T, class Block>
void apply_decay(Block&& P, const Vec<T>& pw, int64_t n0, int64_t m0) {
  for (int64_t i = 0; i < P.rows(); ++i)
    for (int64_t j = 0; j < P.cols(); ++j) {
      const int64_t diff = n0 + i - m0 - j;
      P(i, j) = diff >= 0 ? P(i, j) * pw(diff) : T(0);
    }
}

template <class T>
Vec<T> decay_powers(double log_gamma, int64_t count) {
  Vec<T> pw(count);
  for (int64_t k = 0; k < count; ++k) pw(k) = static_cast<T>(std::exp(static_cast<double>(k) * log_gamma));
  return pw;
}

// Multipliers of every row of one pair for the parallel form (absolute row sums needed in torchscale mode).
template <class T>
Vec<T> parallel_multipliers(const RetentionConfig& cfg, const Layout& l, const RetentionInputs<T>& in, int64_t b,
                            int64_t h, const Vec<T>& pw, double s0) {
  Vec<T> mu = Vec<T>::Ones(l.T);
  if (cfg.normalization() != Normalization::torchscale) return mu;
  const double lg = cfg.log_gammas()[static_cast<size_t>(h)];
  const int64_t Bk = parallel_block;
  Mat<T> P(Bk, Bk);
  for (int64_t n0 = 0; n0 < l.T; n0 += Bk) {
    const int64_t Lr = std::min(Bk, l.T - n0);
    const ConstRows<T> Q = rows(in.q.data(), l.qk(b, n0, h), Lr, l.dk, l.H);
    Vec<T> abs_sum = Vec<T>::Zero(Lr);
    for (int64_t m0 = 0; m0 <= n0; m0 += Bk) {
      const int64_t Lc = std::min(Bk, l.T - m0);
      const ConstRows<T> K = rows(in.k.data(), l.qk(b, m0, h), Lc, l.dk, l.H);
      auto Pb = P.topLeftCorner(Lr, Lc);
      Pb.noalias() = Q * K.transpose();
      apply_decay(Pb, pw, n0, m0);
      abs_sum += Pb.cwiseAbs().rowwise().sum();
    }
    for (int64_t i = 0; i < Lr; ++i) {
      const double root = std::sqrt(scale_at(s0, lg, n0 + i));
      const double c = std::clamp(static_cast<double>(abs_sum(i)) / root, 1.0, 5e4);
      mu(n0 + i) = static_cast<T>(1.0 / (root * c));
    }
  }
  return mu;
}

template <class T>
void parallel_forward(const RetentionConfig& cfg, const RetentionDims& dims, const RetentionInputs<T>& in,
                      const RetentionOutputs<T>& out) {
  const Layout l = layout_of(dims);
  const bool ts = cfg.normalization() == Normalization::torchscale;
  const int64_t Bk = parallel_block;
  for_each_pair(l, [&](int64_t b, int64_t h) {
    const double lg = cfg.log_gammas()[static_cast<size_t>(h)];
    const Vec<T> pw = decay_powers<T>(lg, l.T + 1);
    const InitialState<T> st = initial_state(cfg, l, in.state_kv, in.state_scale, b, h);
    Mat<T> P(Bk, Bk), R(Bk, l.dv), Qb(Bk, l.dk);
    for (int64_t n0 = 0; n0 < l.T; n0 += Bk) {
      const int64_t Lr = std::min(Bk, l.T - n0);
      const ConstRows<T> Q = rows(in.q.data(), l.qk(b, n0, h), Lr, l.dk, l.H);
      auto Rb = R.topRows(Lr);
      Rb.setZero();
      Vec<T> abs_sum = Vec<T>::Zero(Lr);
      for (int64_t m0 = 0; m0 <= n0; m0 += Bk) {
        const int64_t Lc = std::min(Bk, l.T - m0);
        const ConstRows<T> K = rows(in.k.data(), l.qk(b, m0, h), Lc, l.dk, l.H);
        const ConstRows<T> V = rows(in.v.data(), l.vo(b, m0, h), Lc, l.dv, l.H);
        auto Pb = P.topLeftCorner(Lr, Lc);
        Pb.noalias() = Q * K.transpose();
        apply_decay(Pb, pw, n0, m0);
        if (ts) abs_sum += Pb.cwiseAbs().rowwise().sum();
        Rb.noalias() += Pb * V;
      }
      if (st.present) {
        auto Qd = Qb.topRows(Lr);
        Qd.noalias() = pw.segment(n0 + 1, Lr).asDiagonal() * Q;
        Rb.noalias() += Qd * st.U0;
      }
      Rows<T> O = rows(out.o.data(), l.vo(b, n0, h), Lr, l.dv, l.H);
      if (ts) {
        for (int64_t i = 0; i < Lr; ++i) {
          const double root = std::sqrt(scale_at(st.s0, lg, n0 + i));
          const double c = std::clamp(static_cast<double>(abs_sum(i)) / root, 1.0, 5e4);
          O.row(i) = Rb.row(i) * static_cast<T>(1.0 / (root * c));
        }
      } else {
        O = Rb;
      }
    }
    if (!out.state_kv.empty()) {
      // U_{T-1} = gamma^T U0 + K^T diag(gamma^(T-1-m)) V
      const ConstRows<T> K = rows(in.k.data(), l.qk(b, 0, h), l.T, l.dk, l.H);
      const ConstRows<T> V = rows(in.v.data(), l.vo(b, 0, h), l.T, l.dv, l.H);
      const Mat<T> Vd = pw.head(l.T).reverse().asDiagonal() * V;
      Mat<T> U = st.U0 * pw(l.T);
      U.noalias() += K.transpose() * Vd;
      write_final_state(cfg, l, out.state_kv, out.state_scale, b, h, U, scale_at(st.s0, lg, l.T - 1));
    } else {
      write_final_state(cfg, l, out.state_kv, out.state_scale, b, h, st.U0, scale_at(st.s0, lg, l.T - 1));
    }
  });
}

template <class T>
void parallel_backward(const RetentionConfig& cfg, const RetentionDims& dims, const RetentionInputs<T>& in,
                       const RetentionOutputGrads<T>& gout, const RetentionInputGrads<T>& gin) {
  const Layout l = layout_of(dims);
  const int64_t Bk = parallel_block;
  for_each_pair(l, [&](int64_t b, int64_t h) {
    const double lg = cfg.log_gammas()[static_cast<size_t>(h)];
    const Vec<T> pw = decay_powers<T>(lg, l.T + 1);
    const InitialState<T> st = initial_state(cfg, l, in.state_kv, in.state_scale, b, h);
    const Vec<T> mu = parallel_multipliers(cfg, l, in, b, h, pw, st.s0);
    const Mat<T> dUf = final_state_grad(cfg, l, gout.d_state_kv, b, h, scale_at(st.s0, lg, l.T - 1));
    Rows<T> dK_all = rows(gin.dk.data(), l.qk(b, 0, h), l.T, l.dk, l.H);
    Rows<T> dV_all = rows(gin.dv.data(), l.vo(b, 0, h), l.T, l.dv, l.H);
    const ConstRows<T> K_all = rows(in.k.data(), l.qk(b, 0, h), l.T, l.dk, l.H);
    const ConstRows<T> V_all = rows(in.v.data(), l.vo(b, 0, h), l.T, l.dv, l.H);
    // Final-state terms: U_{T-1} = gamma^T U0 + sum_m gamma^(T-1-m) k_m^T v_m.
    {
      const auto dd = pw.head(l.T).reverse().asDiagonal();
      const Mat<T> Vd = dd * V_all;
      const Mat<T> Kd = dd * K_all;
      dK_all.noalias() = Vd * dUf.transpose();
      dV_all.noalias() = Kd * dUf;
    }
    Mat<T> dU0 = dUf * pw(l.T);
    Mat<T> P(Bk, Bk), dP(Bk, Bk), G(Bk, l.dv), X(Bk, std::max(l.dk, l.dv));
    for (int64_t n0 = 0; n0 < l.T; n0 += Bk) {
      const int64_t Lr = std::min(Bk, l.T - n0);
      const ConstRows<T> Q = rows(in.q.data(), l.qk(b, n0, h), Lr, l.dk, l.H);
      const ConstRows<T> dO = rows(gout.d_o.data(), l.vo(b, n0, h), Lr, l.dv, l.H);
      Rows<T> dQ = rows(gin.dq.data(), l.qk(b, n0, h), Lr, l.dk, l.H);
      auto Gb = G.topRows(Lr);
      Gb.noalias() = mu.segment(n0, Lr).asDiagonal() * dO;
      // Initial-state terms: r_n += gamma^(n+1) q_n U0.
      auto Gd = X.topLeftCorner(Lr, l.dv);
      Gd.noalias() = pw.segment(n0 + 1, Lr).asDiagonal() * Gb;
      dQ.noalias() = Gd * st.U0.transpose();
      dU0.noalias() += Q.transpose() * Gd;
      for (int64_t m0 = 0; m0 <= n0; m0 += Bk) {
        const int64_t Lc = std::min(Bk, l.T - m0);
        const ConstRows<T> K = rows(in.k.data(), l.qk(b, m0, h), Lc, l.dk, l.H);
        const ConstRows<T> V = rows(in.v.data(), l.vo(b, m0, h), Lc, l.dv, l.H);
        auto Pb = P.topLeftCorner(Lr, Lc);
        auto dPb = dP.topLeftCorner(Lr, Lc);
        Pb.noalias() = Q * K.transpose();
        apply_decay(Pb, pw, n0, m0);
        dPb.noalias() = Gb * V.transpose();
        apply_decay(dPb, pw, n0, m0);
        dQ.noalias() += dPb * K;
        dK_all.middleRows(m0, Lc).noalias() += dPb.transpose() * Q;
        dV_all.middleRows(m0, Lc).noalias() += Pb.transpose() * Gb;
      }
    }
    write_initial_state_grad(cfg, l, gin.d_state_kv, b, h, dU0, st.s0);
  });
}

// Shared entry points: validation, checked mode, then the kernel.
template <class T, class Kernel>
void run_forward(const char* op, const RetentionConfig& cfg, const RetentionInputs<T>& in,
                 const RetentionOutputs<T>& out, Kernel kernel) {
  const RetentionDims d = validate_forward(op, cfg, in, out);
  check_scale_values(op, cfg, in.state_scale);
  check_inputs(op, in);
  kernel(cfg, d, in, out);
  check_outputs(op, out);
}

template <class T, class Kernel>
void run_backward(const char* op, const RetentionConfig& cfg, const RetentionInputs<T>& in,
                  const RetentionOutputGrads<T>& gout, const RetentionInputGrads<T>& gin, Kernel kernel) {
  const RetentionDims d = validate_backward(op, cfg, in, gout, gin);
  check_scale_values(op, cfg, in.state_scale);
  check_inputs(op, in);
  check_grads_in(op, gout);
  kernel(cfg, d, in, gout, gin);
  check_grads_out(op, gin);
}

}  // namespace detail::cpu_retention

// ---- public API ------------------------------------------------------------------------------------------

template <class T>
void retention_parallel_forward(Cpu, const RetentionConfig& cfg, const RetentionInputs<T>& in,
                                const RetentionOutputs<T>& out) {
  detail::cpu_retention::run_forward("retention_parallel_forward", cfg, in, out,
                                     detail::cpu_retention::parallel_forward<T>);
}
template <class T>
void retention_parallel_backward(Cpu, const RetentionConfig& cfg, const RetentionInputs<T>& in,
                                 const RetentionOutputGrads<T>& gout, const RetentionInputGrads<T>& gin) {
  detail::cpu_retention::run_backward("retention_parallel_backward", cfg, in, gout, gin,
                                      detail::cpu_retention::parallel_backward<T>);
}

template <class T>
void retention_recurrent_forward(Cpu, const RetentionConfig& cfg, const RetentionInputs<T>& in,
                                 const RetentionOutputs<T>& out) {
  detail::cpu_retention::run_forward("retention_recurrent_forward", cfg, in, out,
                                     detail::cpu_retention::recurrent_forward<T>);
}
// Backward through time over the sequence.
template <class T>
void retention_recurrent_backward(Cpu, const RetentionConfig& cfg, const RetentionInputs<T>& in,
                                  const RetentionOutputGrads<T>& gout, const RetentionInputGrads<T>& gin) {
  detail::cpu_retention::run_backward("retention_recurrent_backward", cfg, in, gout, gin,
                                      detail::cpu_retention::recurrent_backward<T>);
}

// Chunk size cfg.chunk_size(): any size, a ragged last chunk and a chunk longer than the sequence included.
template <class T>
void retention_chunkwise_forward(Cpu, const RetentionConfig& cfg, const RetentionInputs<T>& in,
                                 const RetentionOutputs<T>& out) {
  detail::cpu_retention::run_forward("retention_chunkwise_forward", cfg, in, out,
                                     detail::cpu_retention::chunkwise_forward<T>);
}
template <class T>
void retention_chunkwise_backward(Cpu, const RetentionConfig& cfg, const RetentionInputs<T>& in,
                                  const RetentionOutputGrads<T>& gout, const RetentionInputGrads<T>& gin) {
  detail::cpu_retention::run_backward("retention_chunkwise_backward", cfg, in, gout, gin,
                                      detail::cpu_retention::chunkwise_backward<T>);
}

template <class T>
void retention_forward(Cpu, Form form, const RetentionConfig& cfg, const RetentionInputs<T>& in,
                       const RetentionOutputs<T>& out) {
  switch (form) {
    case Form::parallel:
      return retention_parallel_forward(cpu, cfg, in, out);
    case Form::recurrent:
      return retention_recurrent_forward(cpu, cfg, in, out);
    case Form::chunkwise:
      return retention_chunkwise_forward(cpu, cfg, in, out);
  }
  fail("retention_forward: unknown form ", static_cast<int>(form));
}

template <class T>
void retention_backward(Cpu, Form form, const RetentionConfig& cfg, const RetentionInputs<T>& in,
                        const RetentionOutputGrads<T>& gout, const RetentionInputGrads<T>& gin) {
  switch (form) {
    case Form::parallel:
      return retention_parallel_backward(cpu, cfg, in, gout, gin);
    case Form::recurrent:
      return retention_recurrent_backward(cpu, cfg, in, gout, gin);
    case Form::chunkwise:
      return retention_chunkwise_backward(cpu, cfg, in, gout, gin);
  }
  fail("retention_backward: unknown form ", static_cast<int>(form));
}

// One decoding step for every (batch, head): q, k [B, H, dk], v, o [B, H, dv], state_kv [B, H, dk, dv] and
// state_scale [B, H] updated in place. torchscale mode (needs state_scale; scale 0 means empty):
//   s' = s gamma + 1,  kv' = kv gamma sqrt(s / s') + k^T v / sqrt(s'),  o = q kv'
// raw mode (state_scale ignored, may be empty): kv' = gamma kv + k^T v,  o = q kv'.
template <class T>
void retention_recurrent_step(Cpu, const RetentionConfig& cfg, HostView<const T> q, HostView<const T> k,
                              HostView<const T> v, HostView<T> state_kv, HostView<T> state_scale, HostView<T> o) {
  using namespace detail::cpu_retention;
  const char* op = "retention_recurrent_step";
  detail::expect_present(op, "q", q);
  detail::expect_present(op, "k", k);
  detail::expect_present(op, "v", v);
  detail::expect_present(op, "state_kv", state_kv);
  detail::expect_present(op, "o", o);
  if (q.rank() != 3) fail(op, ": q has shape ", q.shape().to_string(), ", expected rank 3 [batch, heads, key_dim]");
  const int64_t B = q.size(0), H = cfg.heads(), dk = cfg.key_dim(), dv = cfg.value_dim();
  if (B <= 0) fail(op, ": batch = ", B, " (from q ", q.shape().to_string(), ") must be positive");
  // Compare before formatting: expect_shape builds its message eagerly, which a decoding step should not pay.
  auto expect = [op](const char* name, const Shape& got, const Shape& want) {
    if (!(got == want)) detail::expect_shape(op, name, got, want);
  };
  expect("q", q.shape(), {B, H, dk});
  expect("k", k.shape(), {B, H, dk});
  expect("v", v.shape(), {B, H, dv});
  expect("state_kv", state_kv.shape(), {B, H, dk, dv});
  expect("o", o.shape(), {B, H, dv});
  const bool ts = cfg.normalization() == Normalization::torchscale;
  if (ts) {
    require(!state_scale.empty(), op,
            ": state_scale is missing; Normalization::torchscale needs it (zeros for an empty state)");
    expect("state_scale", state_scale.shape(), {B, H});
    check_scale_values(op, cfg, HostView<const T>(state_scale));
  }
  if (checked()) {
    check_finite(op, "q", q);
    check_finite(op, "k", k);
    check_finite(op, "v", v);
    check_finite(op, "state_kv", HostView<const T>(state_kv));
    if (ts) check_finite(op, "state_scale", HostView<const T>(state_scale));
  }
  const Layout l{B, 1, H, dk, dv};
  for_each_pair(l, [&](int64_t b, int64_t h) {
    const double gamma = cfg.gammas()[static_cast<size_t>(h)];
    const int64_t p = b * H + h;
    // kv' = a kv + c k^T v and o = q kv' in one pass over the state (decoding is bound by the state's bytes).
    double a = gamma, c = 1.0;
    if (ts) {
      const double s = static_cast<double>(state_scale.data()[p]);
      const double s_new = s * gamma + 1.0;
      c = 1.0 / std::sqrt(s_new);
      a = gamma * std::sqrt(s) * c;
      state_scale.data()[p] = static_cast<T>(s_new);
    }
    const T at = static_cast<T>(a), ct = static_cast<T>(c);
    T* __restrict kvp = state_kv.data() + p * dk * dv;
    T* __restrict out = o.data() + p * dv;
    const T* __restrict qp = q.data() + p * dk;
    const T* __restrict kp = k.data() + p * dk;
    const T* __restrict vp = v.data() + p * dv;
    std::fill(out, out + dv, T(0));
    for (int64_t i = 0; i < dk; ++i) {  // a plain loop: the compiler vectorises it over dv
      T* __restrict row = kvp + i * dv;
      const T ki = ct * kp[i], qi = qp[i];
      for (int64_t j = 0; j < dv; ++j) {
        const T x = row[j] * at + ki * vp[j];
        row[j] = x;
        out[j] += qi * x;
      }
    }
  });
  if (checked()) {
    check_finite(op, "o", HostView<const T>(o));
    check_finite(op, "state_kv (out)", HostView<const T>(state_kv));
  }
}

}  // namespace retnet
