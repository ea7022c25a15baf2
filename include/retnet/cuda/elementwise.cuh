#pragma once
// Copies, fills and reductions over flat device buffers: the CUDA side of cpu/elementwise.hpp. Asynchronous on
// ctx.stream except sum_squares, which returns its value to the host.
#include <cuda_runtime.h>

#include <cstdint>

#include "retnet/cuda/context.cuh"
#include "retnet/cuda/ops_common.cuh"

namespace retnet {

namespace cuda_detail {

struct ScaleOp {
  float f;
  __device__ void operator()(float* y, const float* x) const { y[0] = x[0] * f; }
};

// Per-block partial sums of x² in double: every thread walks a fixed set of elements (grid-stride), the block adds
// its threads in a fixed tree. The grid depends only on n, so the partials (and the total) repeat bit for bit.
template <class T>
__global__ void sum_squares_partial_kernel(double* partial, const T* x, int64_t n, bool packed) {
  __shared__ double scratch[32];
  constexpr int P = Pack<T>::n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  double acc = 0;
  int64_t scalar_from = 0;
  if (packed) {
    const int64_t packs = n / P;
    for (int64_t p = first; p < packs; p += stride) {
      const Pack<T> v = load_pack(x + p * P);
#pragma unroll
      for (int e = 0; e < P; ++e) {
        const double d = static_cast<double>(to_float(v.v[e]));
        acc += d * d;
      }
    }
    scalar_from = packs * P;
  }
  for (int64_t i = scalar_from + first; i < n; i += stride) {
    const double d = static_cast<double>(to_float(x[i]));
    acc += d * d;
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// One block adds the partials in a fixed order.
template <class A>
__global__ void sum_partials_kernel(A* out, const A* partial, int count) {
  __shared__ A scratch[32];
  A acc = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) *out = acc;
}

// Blocks of the sum-of-squares pass: a function of n alone (not of the device), so every device gives the same bits.
inline int sum_squares_blocks(int64_t n) {
  const int64_t per_block = 256 * 8;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + per_block - 1) / per_block, 1024)));
}

}  // namespace cuda_detail

// dst [n] = src (distinct device buffers)
template <class T>
void copy_elements(const Cuda& ctx, T* dst, const T* src, int64_t n) {
  cuda_detail::require_count("copy_elements", "n", n);
  if (n == 0) return;
  RETNET_CUDA_CHECK(
      cudaMemcpyAsync(dst, src, sizeof(T) * static_cast<size_t>(n), cudaMemcpyDeviceToDevice, ctx.stream));
}

// dst [n] = 0
template <class T>
void zero_elements(const Cuda& ctx, T* dst, int64_t n) {
  cuda_detail::require_count("zero_elements", "n", n);
  if (n == 0) return;
  RETNET_CUDA_CHECK(cudaMemsetAsync(dst, 0, sizeof(T) * static_cast<size_t>(n), ctx.stream));
}

// x [n] *= f
template <class T>
void scale_elements(const Cuda& ctx, T* x, T f, int64_t n) {
  cuda_detail::MapArgs<T, 1, 1> a{{x}, {x}};
  cuda_detail::launch_map(ctx, "scale_elements", a, n, cuda_detail::ScaleOp{cuda_detail::host_to_float(f)});
}

// Σ x² in double into *device_out (device memory), in a fixed order (the same bits on every run); does not wait.
template <class T>
void sum_squares_to(const Cuda& ctx, const T* x, int64_t n, double* device_out) {
  using namespace cuda_detail;
  require_count("sum_squares", "n", n);
  if (n == 0) {
    RETNET_CUDA_CHECK(cudaMemsetAsync(device_out, 0, sizeof(double), ctx.stream));
    return;
  }
  const int blocks = sum_squares_blocks(n);
  Workspace ws(ctx.stream, align_up(sizeof(double) * static_cast<size_t>(blocks)));
  double* partial = ws.as<double>();
  sum_squares_partial_kernel<T><<<blocks, 256, 0, ctx.stream>>>(partial, x, n, aligned16(x));
  RETNET_CUDA_CHECK_LAUNCH("sum_squares_partial_kernel");
  sum_partials_kernel<double><<<1, 1024, 0, ctx.stream>>>(device_out, partial, blocks);
  RETNET_CUDA_CHECK_LAUNCH("sum_partials_kernel");
}

// Σ x² in double, as sum_squares_to; waits for the stream and returns the value.
template <class T>
double sum_squares(const Cuda& ctx, const T* x, int64_t n) {
  using namespace cuda_detail;
  Workspace ws(ctx.stream, sizeof(double));
  sum_squares_to(ctx, x, n, ws.as<double>());
  double result = 0;
  RETNET_CUDA_CHECK(cudaMemcpyAsync(&result, ws.as<double>(), sizeof(double), cudaMemcpyDeviceToHost, ctx.stream));
  RETNET_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  return result;
}

namespace cuda_detail {

template <class T>
__global__ void clip_by_norm_kernel(T* x, int64_t n, const double* sumsq, double max_norm) {
  const double norm = sqrt(*sumsq);
  if (!(norm > max_norm)) return;
  const float f = static_cast<float>(max_norm / (norm + 1e-6));
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] = from_float<T>(to_float(x[i]) * f);
}

}  // namespace cuda_detail

// Global-norm clipping on the device: x *= max_norm / (norm + 1e-6) where norm = sqrt(*sumsq) (device double, e.g.
// from sum_squares_to) exceeds max_norm; the factor is the host formula's float, so both give the same bits.
template <class T>
void clip_by_norm(const Cuda& ctx, T* x, int64_t n, const double* sumsq, double max_norm) {
  using namespace cuda_detail;
  require_count("clip_by_norm", "n", n);
  if (n == 0) return;
  clip_by_norm_kernel<T><<<static_cast<unsigned>(sm_count()) * 8, 256, 0, ctx.stream>>>(x, n, sumsq, max_norm);
  RETNET_CUDA_CHECK_LAUNCH("clip_by_norm_kernel");
}

}  // namespace retnet
