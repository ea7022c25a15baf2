#pragma once
// Pre-norm RetNet decoder layer (torchscale's DecoderLayer with decoder_normalize_before):
//   x1 = x + MSR(Norm_ret(x));   x_out = x1 + FFN(Norm_ffn(x1))
// Norm is RMSNorm with a weight (torchscale) or LayerNorm with weight and bias (option).
// Training: each branch may be multiplied by a mask (dropout and drop path, cpu/dropout.hpp) before the add.
#include <cstdint>
#include <cstring>

#include "retnet/nn/backend_ops.hpp"
#include "retnet/nn/ffn.hpp"
#include "retnet/nn/msr.hpp"

namespace retnet {

struct NormSpec {
  bool layernorm = false;
  double eps = 1e-6;
};
template <class T>
struct NormWeights {
  const T *w = nullptr, *b = nullptr;
};
template <class T>
struct NormGrads {
  T *w = nullptr, *b = nullptr;
};

// y [N, d]; mean [N] (LayerNorm only), rstd [N]
template <class B, class T>
void norm_forward(const B& be, const NormSpec& ns, T* y, T* mean, T* rstd, const T* x, const NormWeights<T>& p,
                  int64_t N, int64_t d) {
  if (ns.layernorm)
    layernorm_forward(be, y, mean, rstd, x, p.w, p.b, N, d, ns.eps);
  else
    rmsnorm_forward(be, y, rstd, x, p.w, N, d, ns.eps);
}

// dx += (accumulate) or = the input gradient; parameter gradients accumulate.
template <class B, class T>
void norm_backward(const B& be, const NormSpec& ns, T* dx, const NormGrads<grad_t<T>>& g, const T* dy, const T* x,
                   const NormWeights<T>& p, const T* mean, const T* rstd, int64_t N, int64_t d, bool accumulate) {
  if (ns.layernorm)
    layernorm_backward(be, dx, g.w, g.b, dy, x, p.w, mean, rstd, N, d, accumulate);
  else
    rmsnorm_backward(be, dx, g.w, dy, x, p.w, rstd, N, d, accumulate);
}

struct BlockSpec {
  RetentionConfig retention;
  NormSpec norm;
  double group_norm_eps;
  Activation act;
  int64_t ffn_dim;
};

template <class T>
struct BlockWeights {
  NormWeights<T> ret_norm;
  MsrWeights<T> msr;
  NormWeights<T> ffn_norm;
  FfnWeights<T> ffn;
};
template <class T>
struct BlockGrads {
  NormGrads<T> ret_norm;
  MsrGrads<T> msr;
  NormGrads<T> ffn_norm;
  FfnGrads<T> ffn;
};
template <class T>
struct BlockSaved {
  T *n1, *mean1, *rstd1;  // [N, d], [N], [N]
  MsrSaved<T> msr;
  T* x1;                  // [N, d] residual after retention
  T *n2, *mean2, *rstd2;  // [N, d], [N], [N]
  FfnSaved<T> ffn;
  T* ret_mask = nullptr;   // [N, d] multipliers of the retention branch; null: none
  T* ffn_mask = nullptr;   // [N, d] multipliers of the FFN branch; null: none
  bool recompute = false;  // n1 and n2 are shared by the layers: the backward recomputes them
};
template <class T>
struct BlockScratch {
  T* dn;                 // [N, d]
  T* dbranch = nullptr;  // [N, d] masked gradient of a branch; needed only with masks
  MsrScratch<T> msr;
  FfnScratch<T> ffn;
};

// x [N, d] -> x_out [N, d] (distinct buffers).
template <class B, class T>
void block_forward(const B& be, const BlockSpec& bs, Form form, const MsrDims& dm, const BlockWeights<T>& w, const T* x,
                   const BlockSaved<T>& s, T* x_out, const RotationRows<scalar_t<T>>& rot,
                   StatePtrs<state_t<T>> state_in = {}, StatePtrs<state_t<T>> state_out = {}, bool step = false) {
  const int64_t N = dm.rows(), d = dm.d;
  norm_forward(be, bs.norm, s.n1, s.mean1, s.rstd1, x, w.ret_norm, N, d);
  // Without a mask the branch accumulates straight onto the residual copy; with one it is computed alone,
  // masked, then added.
  if (s.ret_mask)
    zero_elements(be, s.x1, N * d);
  else
    copy_elements(be, s.x1, x, N * d);
  msr_forward(be, bs.retention, form, bs.group_norm_eps, dm, w.msr, s.n1, s.msr, s.x1, rot, state_in, state_out, step);
  if (s.ret_mask) masked_residual_add(be, s.x1, s.ret_mask, x, N * d);
  norm_forward(be, bs.norm, s.n2, s.mean2, s.rstd2, s.x1, w.ffn_norm, N, d);
  if (s.ffn_mask)
    zero_elements(be, x_out, N * d);
  else
    copy_elements(be, x_out, s.x1, N * d);
  ffn_forward(be, bs.act, w.ffn, s.n2, s.ffn, x_out, N, d, bs.ffn_dim);
  if (s.ffn_mask) masked_residual_add(be, x_out, s.ffn_mask, s.x1, N * d);
}

// dres [N, d]: on entry the gradient of x_out, on exit the gradient of x.
template <class B, class T>
void block_backward(const B& be, const BlockSpec& bs, Form form, const MsrDims& dm, const BlockWeights<T>& w,
                    const BlockGrads<grad_t<T>>& g, const T* x, const BlockSaved<T>& s, const BlockScratch<T>& sc,
                    T* dres, const RotationRows<scalar_t<T>>& rot, StatePtrs<state_t<T>> state_in = {},
                    const state_t<T>* d_state_out = nullptr, state_t<T>* d_state_in = nullptr) {
  const int64_t N = dm.rows(), d = dm.d;
  // the gradient reaching a masked branch is the residual gradient times its mask
  auto branch_grad = [&](const T* mask) -> const T* {
    if (!mask) return dres;
    masked_copy(be, sc.dbranch, dres, mask, N * d);
    return sc.dbranch;
  };
  // Shared norm outputs are recomputed, bit for bit, before the branch that reads them.
  if (s.recompute) norm_forward(be, bs.norm, s.n2, s.mean2, s.rstd2, s.x1, w.ffn_norm, N, d);
  ffn_backward(be, bs.act, w.ffn, g.ffn, s.n2, s.ffn, sc.ffn, branch_grad(s.ffn_mask), sc.dn, N, d, bs.ffn_dim);
  norm_backward(be, bs.norm, dres, g.ffn_norm, sc.dn, s.x1, w.ffn_norm, s.mean2, s.rstd2, N, d, true);
  if (s.recompute) norm_forward(be, bs.norm, s.n1, s.mean1, s.rstd1, x, w.ret_norm, N, d);
  msr_backward(be, bs.retention, form, bs.group_norm_eps, dm, w.msr, g.msr, s.n1, s.msr, sc.msr,
               branch_grad(s.ret_mask), sc.dn, rot, state_in, d_state_out, d_state_in);
  norm_backward(be, bs.norm, dres, g.ret_norm, sc.dn, x, w.ret_norm, s.mean1, s.rstd1, N, d, true);
}

}  // namespace retnet
