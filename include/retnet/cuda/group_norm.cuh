#pragma once
// The retention output's per-head group norm (RMS over each head's values, no affine) fused with the swish gate on
// the GPU: the CUDA side of cpu/group_norm.hpp, z = silu(g) ⊙ o · rsqrt(mean(o²) + eps).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "retnet/core/op_types.hpp"
#include "retnet/cuda/activation.cuh"
#include "retnet/cuda/context.cuh"
#include "retnet/cuda/norm.cuh"
#include "retnet/cuda/ops_common.cuh"

namespace retnet {

namespace cuda_detail {

template <class T, int U>
__global__ void group_norm_gate_forward_kernel(T* z, T* rstd, const T* o, const T* g, int64_t rows, int64_t width,
                                               float eps) {
  __shared__ float scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* orow = o + r * width;
    const T* grow = g + r * width;
    T* zrow = z + r * width;
    float ss = 0;
    for (int64_t j = threadIdx.x * U; j < width; j += blockDim.x * U) {
      float ov[U];
      load_u<T, U>(orow + j, ov);
#pragma unroll
      for (int e = 0; e < U; ++e) ss += ov[e] * ov[e];
    }
    ss = block_sum(ss, scratch);
    const float rs = 1.0f / sqrtf(ss / static_cast<float>(width) + eps);
    if (threadIdx.x == 0) rstd[r] = from_float<T>(rs);
    for (int64_t j = threadIdx.x * U; j < width; j += blockDim.x * U) {
      float ov[U], gv[U];
      load_u<T, U>(orow + j, ov);
      load_u<T, U>(grow + j, gv);
#pragma unroll
      for (int e = 0; e < U; ++e) ov[e] = act_f<Activation::swish>(gv[e]) * ov[e] * rs;
      store_u<T, U>(zrow + j, ov);
    }
  }
}

// dz' = dz ⊙ silu(g) feeds the RMS backward: d_o = r·dz' − o·r³·(Σ dz'⊙o)/width; dg = dz ⊙ o·r ⊙ silu'(g).
// Every element is read before it is written, by the same thread, so outputs may alias inputs element for element.
template <class T, int U>
__global__ void group_norm_gate_backward_kernel(T* d_o, T* dg, const T* dz, const T* o, const T* g, const T* rstd,
                                                int64_t rows, int64_t width) {
  __shared__ float scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t base = r * width;
    const float rs = to_float(rstd[r]);
    float dot = 0;
    for (int64_t j = threadIdx.x * U; j < width; j += blockDim.x * U) {
      float zv[U], ov[U], gv[U];
      load_u<T, U>(dz + base + j, zv);
      load_u<T, U>(o + base + j, ov);
      load_u<T, U>(g + base + j, gv);
#pragma unroll
      for (int e = 0; e < U; ++e) dot += zv[e] * act_f<Activation::swish>(gv[e]) * ov[e];
    }
    dot = block_sum(dot, scratch);
    const float k = rs * rs * rs * dot / static_cast<float>(width);
    for (int64_t j = threadIdx.x * U; j < width; j += blockDim.x * U) {
      float zv[U], ov[U], gv[U], dov[U], dgv[U];
      load_u<T, U>(dz + base + j, zv);
      load_u<T, U>(o + base + j, ov);
      load_u<T, U>(g + base + j, gv);
#pragma unroll
      for (int e = 0; e < U; ++e) {
        dgv[e] = zv[e] * (ov[e] * rs) * act_grad_f<Activation::swish>(gv[e]);
        dov[e] = zv[e] * act_f<Activation::swish>(gv[e]) * rs - ov[e] * k;
      }
      store_u<T, U>(dg + base + j, dgv);
      store_u<T, U>(d_o + base + j, dov);
    }
  }
}

inline int group_norm_threads(int64_t width, int unit) {
  const int64_t per_row = (width + unit - 1) / unit;
  return per_row >= 256 ? 256 : per_row >= 128 ? 128 : 64;
}

}  // namespace cuda_detail

// z, o, g [rows, width] on the device; rstd [rows] saved for the backward pass.
template <class T>
void group_norm_gate_forward(const Cuda& ctx, T* z, T* rstd, const T* o, const T* g, int64_t rows, int64_t width,
                             double eps) {
  using namespace cuda_detail;
  check_norm_sizes("group_norm_gate_forward", rows, width);
  if (rows == 0) return;
  require(rstd != nullptr, "group_norm_gate_forward: rstd is null; the backward pass needs it");
  const unsigned blocks = grid_for(rows, 1);
  const float e = static_cast<float>(eps);
  if (rows_packed<T>(width, z, o, g)) {
    constexpr int U = Pack<T>::n;
    group_norm_gate_forward_kernel<T, U>
        <<<blocks, group_norm_threads(width, U), 0, ctx.stream>>>(z, rstd, o, g, rows, width, e);
  } else {
    group_norm_gate_forward_kernel<T, 1>
        <<<blocks, group_norm_threads(width, 1), 0, ctx.stream>>>(z, rstd, o, g, rows, width, e);
  }
  RETNET_CUDA_CHECK_LAUNCH("group_norm_gate_forward_kernel");
}

// From dz [rows, width] writes d_o and dg (both overwrite). dz may be clobbered (as on the CPU; here it is only
// read), and d_o or dg may alias dz.
template <class T>
void group_norm_gate_backward(const Cuda& ctx, T* d_o, T* dg, T* dz, const T* o, const T* g, const T* rstd,
                              int64_t rows, int64_t width) {
  using namespace cuda_detail;
  check_norm_sizes("group_norm_gate_backward", rows, width);
  if (rows == 0) return;
  require(rstd != nullptr, "group_norm_gate_backward: rstd is null; it is saved by group_norm_gate_forward");
  const unsigned blocks = grid_for(rows, 1);
  if (rows_packed<T>(width, d_o, dg, dz, o, g)) {
    constexpr int U = Pack<T>::n;
    group_norm_gate_backward_kernel<T, U>
        <<<blocks, group_norm_threads(width, U), 0, ctx.stream>>>(d_o, dg, dz, o, g, rstd, rows, width);
  } else {
    group_norm_gate_backward_kernel<T, 1>
        <<<blocks, group_norm_threads(width, 1), 0, ctx.stream>>>(d_o, dg, dz, o, g, rstd, rows, width);
  }
  RETNET_CUDA_CHECK_LAUNCH("group_norm_gate_backward_kernel");
}

}  // namespace retnet
