#pragma once
// Gated multi-scale retention (torchscale's MultiScaleRetention), forward and hand-written backward.
//
//   q = x Wqᵀ, k = x Wkᵀ · dk^-½, v = x Wvᵀ, g = x Wgᵀ          (no biases)
//   q, k rotated by their absolute positions (interleaved pairs, torchscale's angles)
//   o = Retention_form(q, k, v [, state])                           [N, H·dv]
//   y = o · rsqrt(mean_dv(o²) + eps)    per (token, head), no affine (or times a weight [dv] shared by heads)
//   z = silu(g) ⊙ y;   out = z Woᵀ  (added to the residual stream)
// Shapes: x [B·T, d] row-major (batch-major rows), q, k [B, T, H, dk], v, g, o, z [B, T, H, dv].
// Grouped heads (kv < H key/value heads): k and v are projected to kv heads, head h reading head h / (H / kv).
// Written once for every backend B: pointers live in B's memory; the ops are B's overloads.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "retnet/core/config.hpp"
#include "retnet/core/precision.hpp"
#include "retnet/core/retention_args.hpp"
#include "retnet/core/rotation.hpp"
#include "retnet/nn/backend_ops.hpp"

namespace retnet {

template <class T>
struct MsrWeights {
  const T *q, *k, *v, *g, *out;  // [Kd, d], [kv·dk, d], [kv·dv, d], [Vd, d], [d, Vd]  (Kd = H·dk)
  // Inference only: bf16 copies of the same matrices; when set, the forward pass multiplies with these.
  const uint16_t *q16 = nullptr, *k16 = nullptr, *v16 = nullptr, *g16 = nullptr, *out16 = nullptr;
  const T* gn = nullptr;  // [dv] group-norm weight; null: none
};
template <class T>
struct MsrGrads {
  T *q, *k, *v, *g, *out;  // same shapes; accumulated (+=)
  T* gn = nullptr;
};
// Saved activations of one call (all written by the forward pass).
template <class T>
struct MsrSaved {
  T *q, *k;                // [N, Kd]  rotated, k scaled
  T *v, *g, *o, *z;        // [N, Vd]
  T* gn_rstd;              // [N, H]
  T* kv_tmp = nullptr;     // grouped heads only: [N, kv·max(dk, dv)], the projections before the repeat
  T* gn_y = nullptr;       // with a group-norm weight only: [N, Vd], the weighted norm before the gate
  bool recompute = false;  // z and gn_y are shared by the layers: the backward recomputes them
};
// Scratch for the backward pass.
template <class T>
struct MsrScratch {
  T *dq, *dk;             // [N, Kd]
  T *dv, *dg, *dz, *do_;  // [N, Vd]
  T* dkv = nullptr;       // grouped heads only: [N, kv·max(dk, dv)]
};
struct MsrDims {
  int64_t batch, length, d, heads, dk, dv;
  int64_t kv_heads = 0;  // 0: heads
  int64_t rows() const { return batch * length; }
  int64_t vd() const { return heads * dv; }
  int64_t kd() const { return heads * dk; }
  int64_t kv() const { return kv_heads > 0 ? kv_heads : heads; }
  int64_t group() const { return heads / kv(); }
};

// Per-layer recurrent state views ([B, H, dk, dv] and [B, H]); null pointers mean "none".
template <class T>
struct StatePtrs {
  T* kv = nullptr;
  T* scale = nullptr;
};

// The retention op's inputs over the saved (rotated, scaled) q, k and v, with the optional initial state.
template <class Space, class T>
RetentionInputs<T, Space, state_t<T>> msr_retention_inputs(const MsrDims& dm, const MsrSaved<T>& s,
                                                           StatePtrs<state_t<T>> state_in) {
  using CView = TensorView<const T, Space>;
  using SView = TensorView<const state_t<T>, Space>;
  const Shape qk{dm.batch, dm.length, dm.heads, dm.dk}, vo{dm.batch, dm.length, dm.heads, dm.dv};
  RetentionInputs<T, Space, state_t<T>> in;
  in.q = CView(s.q, qk);
  in.k = CView(s.k, qk);
  in.v = CView(s.v, vo);
  if (state_in.kv) in.state_kv = SView(state_in.kv, {dm.batch, dm.heads, dm.dk, dm.dv});
  if (state_in.scale) in.state_scale = SView(state_in.scale, {dm.batch, dm.heads});
  return in;
}

// Rotation rows of one call: sin/cos [rows, dk/2] and the first table row of each batch row, in backend memory.
// T here is the scalar type (scalar_t of the activations).
template <class T>
struct RotationRows {
  const T *sin = nullptr, *cos = nullptr;
  const int64_t* row_off = nullptr;  // [batch]
};

// y (+)= x wᵀ; on the CPU a bf16 inference copy w16 (when set) replaces w.
template <class B, class T>
void project(const B& be, T* y, const T* x, const T* w, const uint16_t* w16, int64_t n, int64_t in, int64_t out,
             bool accumulate = false) {
  if constexpr (std::is_same_v<B, Cpu>) {
    linear_forward_mixed(be, y, x, w, w16, n, in, out, accumulate);
  } else {
    require(w16 == nullptr, "bf16 inference weights are a CPU feature");
    linear_forward(be, y, x, w, n, in, out, accumulate);
  }
}

// z = silu(g) ⊙ groupnorm(o) (with the group-norm weight when there is one, through gn_y); the backward pass calls
// it again when z and gn_y are shared by the layers (MsrSaved::recompute).
template <class B, class T>
void msr_gate_forward(const B& be, double eps, const MsrDims& dm, const MsrWeights<T>& w, const MsrSaved<T>& s) {
  const int64_t N = dm.rows();
  if (w.gn) {
    rmsnorm_forward(be, s.gn_y, s.gn_rstd, s.o, w.gn, N * dm.heads, dm.dv, eps);
    glu_forward(be, Activation::swish, s.z, s.g, s.gn_y, N * dm.vd());
  } else {
    group_norm_gate_forward(be, s.z, s.gn_rstd, s.o, s.g, N * dm.heads, dm.dv, eps);
  }
}

// Forward. out [N, d] receives += z Woᵀ (the residual add). state_in / state_out: per-layer retention state
// (torchscale storage); step = true (length 1, recurrent) updates state_in in place with the recurrent step.
template <class B, class T>
void msr_forward(const B& be, const RetentionConfig& rc, Form form, double eps, const MsrDims& dm,
                 const MsrWeights<T>& w, const T* x, const MsrSaved<T>& s, T* out, const RotationRows<scalar_t<T>>& rot,
                 StatePtrs<state_t<T>> state_in = {}, StatePtrs<state_t<T>> state_out = {}, bool step = false) {
  using C = scalar_t<T>;
  using S = state_t<T>;
  using Space = typename B::space;
  const int64_t N = dm.rows(), d = dm.d, Vd = dm.vd(), Kd = dm.kd();
  project(be, s.q, x, w.q, w.q16, N, d, Kd);
  if (dm.group() > 1) {
    const int64_t kv = dm.kv(), G = dm.group();
    project(be, s.kv_tmp, x, w.k, w.k16, N, d, kv * dm.dk);
    repeat_heads_forward(be, s.k, s.kv_tmp, N, kv, G, dm.dk);
    project(be, s.kv_tmp, x, w.v, w.v16, N, d, kv * dm.dv);
    repeat_heads_forward(be, s.v, s.kv_tmp, N, kv, G, dm.dv);
  } else {
    project(be, s.k, x, w.k, w.k16, N, d, Kd);
    project(be, s.v, x, w.v, w.v16, N, d, Vd);
  }
  project(be, s.g, x, w.g, w.g16, N, d, Vd);
  const C scaling = C(1) / std::sqrt(C(dm.dk));
  rotate_heads(be, s.q, rot.sin, rot.cos, rot.row_off, dm.batch, dm.length, dm.heads, dm.dk, C(1), false);
  rotate_heads(be, s.k, rot.sin, rot.cos, rot.row_off, dm.batch, dm.length, dm.heads, dm.dk, scaling, false);

  const Shape vo{dm.batch, dm.length, dm.heads, dm.dv};
  const Shape skv{dm.batch, dm.heads, dm.dk, dm.dv}, ssc{dm.batch, dm.heads};
  using View = TensorView<T, Space>;
  using CView = TensorView<const T, Space>;
  using SView = TensorView<S, Space>;
  if (step) {
    retention_recurrent_step(be, rc, CView(s.q, {dm.batch, dm.heads, dm.dk}), CView(s.k, {dm.batch, dm.heads, dm.dk}),
                             CView(s.v, {dm.batch, dm.heads, dm.dv}), SView(state_in.kv, skv),
                             SView(state_in.scale, ssc), View(s.o, {dm.batch, dm.heads, dm.dv}));
  } else {
    const RetentionInputs<T, Space, S> in = msr_retention_inputs<Space>(dm, s, state_in);
    RetentionOutputs<T, Space, S> o;
    o.o = View(s.o, vo);
    if (state_out.kv) o.state_kv = SView(state_out.kv, skv);
    if (state_out.scale) o.state_scale = SView(state_out.scale, ssc);
    retention_forward(be, form, rc, in, o);
  }
  msr_gate_forward(be, eps, dm, w, s);
  project(be, out, s.z, w.out, w.out16, N, Vd, d, /*accumulate=*/true);
}

// Backward. dout [N, d]: gradient of the layer output. Writes dx [N, d] (overwrite) = gradient of the
// layer input x, accumulates the weight gradients, and handles the state gradients: d_state_out (gradient
// of the final state, may be null) and d_state_in (written: gradient of the initial state, may be null).
template <class B, class T>
void msr_backward(const B& be, const RetentionConfig& rc, Form form, double eps, const MsrDims& dm,
                  const MsrWeights<T>& w, const MsrGrads<grad_t<T>>& gw, const T* x, const MsrSaved<T>& s,
                  const MsrScratch<T>& sc, const T* dout, T* dx, const RotationRows<scalar_t<T>>& rot,
                  StatePtrs<state_t<T>> state_in = {}, const state_t<T>* d_state_out = nullptr,
                  state_t<T>* d_state_in = nullptr) {
  using C = scalar_t<T>;
  using S = state_t<T>;
  using Space = typename B::space;
  const int64_t N = dm.rows(), d = dm.d, Vd = dm.vd(), Kd = dm.kd();
  if (s.recompute) msr_gate_forward(be, eps, dm, w, s);  // z (and gn_y) again, bit for bit
  // out = z Woᵀ
  linear_backward(be, sc.dz, gw.out, dout, s.z, w.out, N, Vd, d);
  // z = silu(g) ⊙ groupnorm(o); with a weight the gradient of o lands in sc.dz
  T* d_o = sc.do_;
  if (w.gn) {
    glu_backward(be, Activation::swish, sc.dg, sc.do_, sc.dz, s.g, s.gn_y, N * Vd);
    rmsnorm_backward(be, sc.dz, gw.gn, sc.do_, s.o, w.gn, s.gn_rstd, N * dm.heads, dm.dv);
    d_o = sc.dz;
  } else {
    group_norm_gate_backward(be, sc.do_, sc.dg, sc.dz, s.o, s.g, s.gn_rstd, N * dm.heads, dm.dv);
  }
  // retention backward
  const Shape qk{dm.batch, dm.length, dm.heads, dm.dk}, vo{dm.batch, dm.length, dm.heads, dm.dv};
  const Shape skv{dm.batch, dm.heads, dm.dk, dm.dv};
  using View = TensorView<T, Space>;
  using CView = TensorView<const T, Space>;
  const RetentionInputs<T, Space, S> in = msr_retention_inputs<Space>(dm, s, state_in);
  RetentionOutputGrads<T, Space, S> go;
  go.d_o = CView(d_o, vo);
  if (d_state_out) go.d_state_kv = TensorView<const S, Space>(d_state_out, skv);
  RetentionInputGrads<T, Space, S> gi;
  gi.dq = View(sc.dq, qk);
  gi.dk = View(sc.dk, qk);
  gi.dv = View(sc.dv, vo);
  if (d_state_in) gi.d_state_kv = TensorView<S, Space>(d_state_in, skv);
  retention_backward(be, form, rc, in, go, gi);
  // un-rotate, undo the key scaling
  const C scaling = C(1) / std::sqrt(C(dm.dk));
  rotate_heads(be, sc.dq, rot.sin, rot.cos, rot.row_off, dm.batch, dm.length, dm.heads, dm.dk, C(1), true);
  rotate_heads(be, sc.dk, rot.sin, rot.cos, rot.row_off, dm.batch, dm.length, dm.heads, dm.dk, scaling, true);
  // projections
  linear_backward(be, dx, gw.q, sc.dq, x, w.q, N, d, Kd, GradMode::overwrite);
  if (dm.group() > 1) {
    const int64_t kv = dm.kv(), G = dm.group();
    repeat_heads_backward(be, sc.dkv, sc.dk, N, kv, G, dm.dk);
    linear_backward(be, dx, gw.k, sc.dkv, x, w.k, N, d, kv * dm.dk, GradMode::accumulate);
    repeat_heads_backward(be, sc.dkv, sc.dv, N, kv, G, dm.dv);
    linear_backward(be, dx, gw.v, sc.dkv, x, w.v, N, d, kv * dm.dv, GradMode::accumulate);
  } else {
    linear_backward(be, dx, gw.k, sc.dk, x, w.k, N, d, Kd, GradMode::accumulate);
    linear_backward(be, dx, gw.v, sc.dv, x, w.v, N, d, Vd, GradMode::accumulate);
  }
  linear_backward(be, dx, gw.g, sc.dg, x, w.g, N, d, Vd, GradMode::accumulate);
}

}  // namespace retnet
