#pragma once
// The retention output's per-head group norm (RMS over each head's dv values, no affine) fused with the swish
// gate: z = silu(g) ⊙ o · rsqrt(mean(o²) + eps).
#include <cmath>
#include <cstdint>

#include "retnet/core/backend.hpp"
#include "retnet/cpu/activation.hpp"
#include "retnet/cpu/norm.hpp"

namespace retnet {

// z, o, g [rows, width]; rstd [rows] saved for the backward pass.
template <class T>
void group_norm_gate_forward(Cpu, T* z, T* rstd, const T* o, const T* g, int64_t rows, int64_t width, double eps) {
#pragma omp parallel for schedule(static) if (rows * width > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const T* orow = o + r * width;
    T ss = 0;
    for (int64_t j = 0; j < width; ++j) ss += orow[j] * orow[j];
    const T rs = T(1) / std::sqrt(ss / T(width) + T(eps));
    rstd[r] = rs;
    const T* grow = g + r * width;
    T* zrow = z + r * width;
    for (int64_t j = 0; j < width; ++j) zrow[j] = activate(Activation::swish, grow[j]) * orow[j] * rs;
  }
}

// From dz [rows, width] (clobbered: used as scratch) writes d_o and dg (both overwrite).
template <class T>
void group_norm_gate_backward(Cpu, T* d_o, T* dg, T* dz, const T* o, const T* g, const T* rstd, int64_t rows,
                              int64_t width) {
#pragma omp parallel for schedule(static) if (rows * width > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const T rs = rstd[r];
    for (int64_t j = 0; j < width; ++j) {
      const int64_t i = r * width + j;
      const T gz = dz[i], gv = g[i];
      const T y = o[i] * rs;
      dg[i] = gz * y * activate_grad(Activation::swish, gv);
      dz[i] = gz * activate(Activation::swish, gv);
    }
  }
  rmsnorm_backward<T>(cpu, d_o, nullptr, dz, o, nullptr, rstd, rows, width);
}

}  // namespace retnet
