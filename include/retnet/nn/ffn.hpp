#pragma once
// Feed-forward networks, bias-free: torchscale's GLU  fc2(act(fc1 x) ⊙ gate x)  and the paper's plain
// MLP  fc2(act(fc1 x)).  Shapes: x [N, d], fc1/gate [F, d], fc2 [d, F].
// Training: an activation-dropout mask (core/dropout.hpp, cpu/dropout.hpp) multiplies what fc2 reads.
#include <cstdint>

#include "retnet/nn/backend_ops.hpp"
#include "retnet/nn/msr.hpp"

namespace retnet {

template <class T>
struct FfnWeights {
  const T *fc1, *gate, *fc2;  // gate is null for the MLP
  // Inference only: bf16 copies; when set, the forward pass multiplies with these.
  const uint16_t *fc1_16 = nullptr, *gate16 = nullptr, *fc2_16 = nullptr;
};
template <class T>
struct FfnGrads {
  T *fc1, *gate, *fc2;
};
template <class T>
struct FfnSaved {
  T *h, *gt, *a;           // [N, F]: fc1 output, gate output (GLU only), the product fed to fc2 (after dropout)
  T* act_mask = nullptr;   // [N, F] activation-dropout multipliers; null: none
  bool recompute = false;  // a is shared by the layers: the backward recomputes it
};
template <class T>
struct FfnScratch {
  T *da, *dgt;  // [N, F]
};

// a = act(h) (⊙ gt for a GLU), times the activation-dropout mask; the backward pass calls it again when a is shared
// by the layers (FfnSaved::recompute).
template <class B, class T>
void ffn_activation_forward(const B& be, Activation act, const FfnSaved<T>& s, bool glu, int64_t N, int64_t F) {
  if (glu)
    glu_forward(be, act, s.a, s.h, s.gt, N * F);
  else
    activation_forward(be, act, s.a, s.h, N * F);
  if (s.act_mask) apply_mask(be, s.a, s.act_mask, N * F);
}

// out [N, d] += fc2(...)  (the residual add)
template <class B, class T>
void ffn_forward(const B& be, Activation act, const FfnWeights<T>& w, const T* x, const FfnSaved<T>& s, T* out,
                 int64_t N, int64_t d, int64_t F) {
  project(be, s.h, x, w.fc1, w.fc1_16, N, d, F);
  if (w.gate) project(be, s.gt, x, w.gate, w.gate16, N, d, F);
  ffn_activation_forward(be, act, s, w.gate != nullptr, N, F);
  project(be, out, s.a, w.fc2, w.fc2_16, N, F, d, /*accumulate=*/true);
}

// dx [N, d] (overwrite) from dout [N, d]; weight gradients accumulate.
template <class B, class T>
void ffn_backward(const B& be, Activation act, const FfnWeights<T>& w, const FfnGrads<grad_t<T>>& gw, const T* x,
                  const FfnSaved<T>& s, const FfnScratch<T>& sc, const T* dout, T* dx, int64_t N, int64_t d,
                  int64_t F) {
  if (s.recompute) ffn_activation_forward(be, act, s, w.gate != nullptr, N, F);  // a again, bit for bit
  linear_backward(be, sc.da, gw.fc2, dout, s.a, w.fc2, N, F, d);
  if (s.act_mask) apply_mask(be, sc.da, s.act_mask, N * F);
  if (w.gate) {
    glu_backward(be, act, sc.da, sc.dgt, sc.da, s.h, s.gt, N * F);  // sc.da becomes d(fc1 out)
    linear_backward(be, dx, gw.fc1, sc.da, x, w.fc1, N, d, F, GradMode::overwrite);
    linear_backward(be, dx, gw.gate, sc.dgt, x, w.gate, N, d, F, GradMode::accumulate);
  } else {
    activation_backward(be, act, sc.da, sc.da, s.h, N * F);
    linear_backward(be, dx, gw.fc1, sc.da, x, w.fc1, N, d, F, GradMode::overwrite);
  }
}

}  // namespace retnet
