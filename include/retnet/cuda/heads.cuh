#pragma once
// Grouped heads on the GPU: the CUDA side of cpu/heads.hpp (query head h reads key/value head h / group; the
// backward pass sums each group's gradients in head order, in float).
#include <cuda_runtime.h>

#include <cstdint>

#include "retnet/cuda/context.cuh"
#include "retnet/cuda/ops_common.cuh"

namespace retnet {

namespace cuda_detail {

template <class T>
__global__ void repeat_heads_forward_kernel(T* y, const T* x, int64_t n, int64_t kv, int64_t group, int64_t width) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t j = i % width, h = (i / width) % (kv * group), r = i / (width * kv * group);
    y[i] = x[(r * kv + h / group) * width + j];
  }
}

template <class T>
__global__ void repeat_heads_backward_kernel(T* dx, const T* dy, int64_t n, int64_t group, int64_t width) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t j = i % width, rh = i / width;  // rh = r * kv + h
    float s = 0.0f;
    for (int64_t g = 0; g < group; ++g) s += to_float(dy[(rh * group + g) * width + j]);
    dx[i] = from_float<T>(s);
  }
}

inline void check_repeat_heads(const char* op, int64_t rows, int64_t kv, int64_t group, int64_t width) {
  require_count(op, "rows", rows);
  require_count(op, "kv", kv);
  require_count(op, "width", width);
  require(group > 0, op, ": group = ", group, " must be positive");
}

}  // namespace cuda_detail

// y [rows, kv·group, width] from x [rows, kv, width] on the device (distinct buffers).
template <class T>
void repeat_heads_forward(const Cuda& ctx, T* y, const T* x, int64_t rows, int64_t kv, int64_t group, int64_t width) {
  using namespace cuda_detail;
  static_assert(is_op_storage_v<T>, "repeat_heads_forward: float or __nv_bfloat16 storage");
  check_repeat_heads("repeat_heads_forward", rows, kv, group, width);
  const int64_t n = rows * kv * group * width;
  if (n == 0) return;
  repeat_heads_forward_kernel<T><<<grid_for(n, 256), 256, 0, ctx.stream>>>(y, x, n, kv, group, width);
  RETNET_CUDA_CHECK_LAUNCH("repeat_heads_forward_kernel");
}

// dx [rows, kv, width] (overwrite) = the sum over each group of dy [rows, kv·group, width], on the device.
template <class T>
void repeat_heads_backward(const Cuda& ctx, T* dx, const T* dy, int64_t rows, int64_t kv, int64_t group,
                           int64_t width) {
  using namespace cuda_detail;
  static_assert(is_op_storage_v<T>, "repeat_heads_backward: float or __nv_bfloat16 storage");
  check_repeat_heads("repeat_heads_backward", rows, kv, group, width);
  const int64_t n = rows * kv * width;
  if (n == 0) return;
  repeat_heads_backward_kernel<T><<<grid_for(n, 256), 256, 0, ctx.stream>>>(dx, dy, n, group, width);
  RETNET_CUDA_CHECK_LAUNCH("repeat_heads_backward_kernel");
}

}  // namespace retnet
