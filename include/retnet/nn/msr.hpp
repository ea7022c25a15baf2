#pragma once
// Gated multi-scale retention (torchscale's MultiScaleRetention), forward and hand-written backward.
//
//   q = x Wqᵀ, k = x Wkᵀ · dk^-½, v = x Wvᵀ, g = x Wgᵀ          (no biases)
//   q, k rotated by their absolute positions (interleaved pairs, torchscale's angles)
//   o = Retention_form(q, k, v [, state])                           [N, H·dv]
//   y = o · rsqrt(mean_dv(o²) + eps)    per (token, head), no affine
//   z = silu(g) ⊙ y;   out = z Woᵀ  (added to the residual stream)
// Shapes: x [B·T, d] row-major (batch-major rows), q, k [B, T, H, dk], v, g, o, z [B, T, H, dv].
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "retnet/core/config.hpp"
#include "retnet/core/retention_args.hpp"
#include "retnet/core/rotation.hpp"
#include "retnet/cpu/activation.hpp"
#include "retnet/cpu/linear.hpp"
#include "retnet/cpu/linear_bf16.hpp"
#include "retnet/cpu/norm.hpp"
#include "retnet/cpu/retention.hpp"

namespace retnet {

template <class T>
struct MsrWeights {
  const T *q, *k, *v, *g, *out;  // [d, d], [d, d], [Vd, d], [Vd, d], [d, Vd]
  // Inference only: bf16 copies of the same matrices; when set, the forward pass multiplies with these.
  const uint16_t *q16 = nullptr, *k16 = nullptr, *v16 = nullptr, *g16 = nullptr, *out16 = nullptr;
};
template <class T>
struct MsrGrads {
  T *q, *k, *v, *g, *out;  // same shapes; accumulated (+=)
};
// Saved activations of one call (all written by the forward pass).
template <class T>
struct MsrSaved {
  T *q, *k;          // [N, d]  rotated, k scaled
  T *v, *g, *o, *z;  // [N, Vd]
  T* gn_rstd;        // [N, H]
};
// Scratch for the backward pass.
template <class T>
struct MsrScratch {
  T *dq, *dk;             // [N, d]
  T *dv, *dg, *dz, *do_;  // [N, Vd]
};
struct MsrDims {
  int64_t batch, length, d, heads, dk, dv;
  int64_t rows() const { return batch * length; }
  int64_t vd() const { return heads * dv; }
};

// Per-layer recurrent state views ([B, H, dk, dv] and [B, H]); null pointers mean "none".
template <class T>
struct StatePtrs {
  T* kv = nullptr;
  T* scale = nullptr;
};

// The retention op's inputs over the saved (rotated, scaled) q, k and v, with the optional initial state.
template <class T>
RetentionInputs<T> msr_retention_inputs(const MsrDims& dm, const MsrSaved<T>& s, StatePtrs<T> state_in) {
  const Shape qk{dm.batch, dm.length, dm.heads, dm.dk}, vo{dm.batch, dm.length, dm.heads, dm.dv};
  RetentionInputs<T> in;
  in.q = HostView<const T>(s.q, qk);
  in.k = HostView<const T>(s.k, qk);
  in.v = HostView<const T>(s.v, vo);
  if (state_in.kv) in.state_kv = HostView<const T>(state_in.kv, {dm.batch, dm.heads, dm.dk, dm.dv});
  if (state_in.scale) in.state_scale = HostView<const T>(state_in.scale, {dm.batch, dm.heads});
  return in;
}

// x [B, T, H, dk] in place: row (b, t) uses table row row_off[b] + t; inverse applies the transpose.
template <class T>
void rotate_heads(T* x, const MsrDims& dm, const RotationTable<T>& tab, const int64_t* row_off, bool inverse) {
  const int64_t half = dm.dk / 2;
#pragma omp parallel for schedule(static) if (dm.rows() * dm.d > 32768)
  for (int64_t r = 0; r < dm.rows(); ++r) {
    const int64_t b = r / dm.length, t = r % dm.length;
    const int64_t pos = row_off[b] + t;
    const T* s = tab.sin.data() + pos * half;
    const T* c = tab.cos.data() + pos * half;
    for (int64_t h = 0; h < dm.heads; ++h) rotate_row(x + (r * dm.heads + h) * dm.dk, s, c, half, inverse);
  }
}

// Forward. out [N, d] receives += z Woᵀ (the residual add). state_in / state_out: per-layer retention state
// (torchscale storage); step = true (length 1, recurrent) updates state_in in place with the recurrent step.
template <class T>
void msr_forward(Cpu, const RetentionConfig& rc, Form form, double eps, const MsrDims& dm, const MsrWeights<T>& w,
                 const T* x, const MsrSaved<T>& s, T* out, const RotationTable<T>& rot, const int64_t* row_off,
                 StatePtrs<T> state_in = {}, StatePtrs<T> state_out = {}, bool step = false) {
  const int64_t N = dm.rows(), d = dm.d, Vd = dm.vd();
  linear_forward_mixed(cpu, s.q, x, w.q, w.q16, N, d, d);
  linear_forward_mixed(cpu, s.k, x, w.k, w.k16, N, d, d);
  linear_forward_mixed(cpu, s.v, x, w.v, w.v16, N, d, Vd);
  linear_forward_mixed(cpu, s.g, x, w.g, w.g16, N, d, Vd);
  const T scaling = T(1) / std::sqrt(T(dm.dk));
#pragma omp parallel for schedule(static) if (N * d > 32768)
  for (int64_t i = 0; i < N * d; ++i) s.k[i] *= scaling;
  rotate_heads(s.q, dm, rot, row_off, false);
  rotate_heads(s.k, dm, rot, row_off, false);

  const Shape vo{dm.batch, dm.length, dm.heads, dm.dv};
  const Shape skv{dm.batch, dm.heads, dm.dk, dm.dv}, ssc{dm.batch, dm.heads};
  if (step) {
    retention_recurrent_step(cpu, rc, HostView<const T>(s.q, {dm.batch, dm.heads, dm.dk}),
                             HostView<const T>(s.k, {dm.batch, dm.heads, dm.dk}),
                             HostView<const T>(s.v, {dm.batch, dm.heads, dm.dv}), HostView<T>(state_in.kv, skv),
                             HostView<T>(state_in.scale, ssc), HostView<T>(s.o, {dm.batch, dm.heads, dm.dv}));
  } else {
    const RetentionInputs<T> in = msr_retention_inputs(dm, s, state_in);
    RetentionOutputs<T> o;
    o.o = HostView<T>(s.o, vo);
    if (state_out.kv) o.state_kv = HostView<T>(state_out.kv, skv);
    if (state_out.scale) o.state_scale = HostView<T>(state_out.scale, ssc);
    retention_forward(cpu, form, rc, in, o);
  }
  // Group norm (per token and head over dv, no affine) and swish gate.
  const int64_t dv = dm.dv, H = dm.heads;
#pragma omp parallel for schedule(static) if (N * Vd > 32768)
  for (int64_t r = 0; r < N * H; ++r) {
    const T* orow = s.o + r * dv;
    T ss = 0;
    for (int64_t j = 0; j < dv; ++j) ss += orow[j] * orow[j];
    const T rs = T(1) / std::sqrt(ss / T(dv) + T(eps));
    s.gn_rstd[r] = rs;
    const T* grow = s.g + r * dv;
    T* zrow = s.z + r * dv;
    for (int64_t j = 0; j < dv; ++j) zrow[j] = activate(Activation::swish, grow[j]) * orow[j] * rs;
  }
  linear_forward_mixed(cpu, out, s.z, w.out, w.out16, N, Vd, d, /*accumulate=*/true);
}

// Backward. dout [N, d]: gradient of the layer output. Writes dx [N, d] (overwrite) = gradient of the
// layer input x, accumulates the weight gradients, and handles the state gradients: d_state_out (gradient
// of the final state, may be null) and d_state_in (written: gradient of the initial state, may be null).
template <class T>
void msr_backward(Cpu, const RetentionConfig& rc, Form form, const MsrDims& dm, const MsrWeights<T>& w,
                  const MsrGrads<T>& gw, const T* x, const MsrSaved<T>& s, const MsrScratch<T>& sc, const T* dout,
                  T* dx, const RotationTable<T>& rot, const int64_t* row_off, StatePtrs<T> state_in = {},
                  const T* d_state_out = nullptr, T* d_state_in = nullptr) {
  const int64_t N = dm.rows(), d = dm.d, Vd = dm.vd(), dv = dm.dv, H = dm.heads;
  // out = z Woᵀ
  linear_backward(cpu, sc.dz, gw.out, dout, s.z, w.out, N, Vd, d);
  // z = silu(g) ⊙ o·r :  dy (into dz) and dg
#pragma omp parallel for schedule(static) if (N * Vd > 32768)
  for (int64_t r = 0; r < N * H; ++r) {
    const T rs = s.gn_rstd[r];
    for (int64_t j = 0; j < dv; ++j) {
      const int64_t i = r * dv + j;
      const T gz = sc.dz[i], gv = s.g[i];
      const T y = s.o[i] * rs;
      sc.dg[i] = gz * y * activate_grad(Activation::swish, gv);
      sc.dz[i] = gz * activate(Activation::swish, gv);
    }
  }
  // group norm backward (no affine): do_ from dy
  rmsnorm_backward<T>(cpu, sc.do_, nullptr, sc.dz, s.o, nullptr, s.gn_rstd, N * H, dv);
  // retention backward
  const Shape qk{dm.batch, dm.length, dm.heads, dm.dk}, vo{dm.batch, dm.length, dm.heads, dm.dv};
  const Shape skv{dm.batch, dm.heads, dm.dk, dm.dv};
  const RetentionInputs<T> in = msr_retention_inputs(dm, s, state_in);
  RetentionOutputGrads<T> go;
  go.d_o = HostView<const T>(sc.do_, vo);
  if (d_state_out) go.d_state_kv = HostView<const T>(d_state_out, skv);
  RetentionInputGrads<T> gi;
  gi.dq = HostView<T>(sc.dq, qk);
  gi.dk = HostView<T>(sc.dk, qk);
  gi.dv = HostView<T>(sc.dv, vo);
  if (d_state_in) gi.d_state_kv = HostView<T>(d_state_in, skv);
  retention_backward(cpu, form, rc, in, go, gi);
  // un-rotate, undo the key scaling
  rotate_heads(sc.dq, dm, rot, row_off, true);
  rotate_heads(sc.dk, dm, rot, row_off, true);
  const T scaling = T(1) / std::sqrt(T(dm.dk));
#pragma omp parallel for schedule(static) if (N * d > 32768)
  for (int64_t i = 0; i < N * d; ++i) sc.dk[i] *= scaling;
  // projections
  linear_backward(cpu, dx, gw.q, sc.dq, x, w.q, N, d, d, GradMode::overwrite);
  linear_backward(cpu, dx, gw.k, sc.dk, x, w.k, N, d, d, GradMode::accumulate);
  linear_backward(cpu, dx, gw.v, sc.dv, x, w.v, N, d, Vd, GradMode::accumulate);
  linear_backward(cpu, dx, gw.g, sc.dg, x, w.g, N, d, Vd, GradMode::accumulate);
}

}  // namespace retnet
