#pragma once
// Dropout masks and their element-wise uses on the GPU: the CUDA side of cpu/dropout.hpp. The decisions come from
// the same hash functions (core/dropout.hpp), so a float mask equals the CPU's bit for bit; a bf16 mask holds the
// float mask's values rounded to bf16.
#include <cuda_runtime.h>

#include <cstdint>

#include "retnet/core/dropout.hpp"
#include "retnet/cuda/context.cuh"
#include "retnet/cuda/ops_common.cuh"

namespace retnet {

namespace cuda_detail {

// The multipliers of one fill, computed on the host in float as the CPU does (T(1) / T(1 - p)).
struct MaskScalars {
  uint64_t elem_stream, path_stream, threshold, path_threshold;
  int64_t row_offset;
  float keep_scale, path_scale;
  bool elem, path;
};

// One block per mask row (b, t); threads walk the row's width.
template <class T>
__global__ void fill_dropout_mask_kernel(T* mask, MaskScalars s, int64_t Tn, int64_t width, const int64_t* starts) {
  const int64_t r = blockIdx.x;
  const int64_t b = r / Tn, t = r % Tn;
  const int64_t row = s.row_offset + b;
  float row_scale = 1.0f;
  if (s.path) row_scale = dropout_row_hash(s.path_stream, row) >= s.path_threshold ? s.path_scale : 0.0f;
  T* m = mask + r * width;
  if (s.elem && row_scale != 0.0f) {
    const uint64_t pos_hash = dropout_position_hash(s.elem_stream, row, starts ? starts[b] + t : t);
    const T kept = from_float<T>(s.keep_scale * row_scale), dropped = from_float<T>(0.0f);
    for (int64_t j = threadIdx.x; j < width; j += blockDim.x)
      m[j] = dropout_element_hash(pos_hash, j) >= s.threshold ? kept : dropped;
  } else {
    const T v = from_float<T>(row_scale);
    for (int64_t j = threadIdx.x; j < width; j += blockDim.x) m[j] = v;
  }
}

struct ApplyMaskOp {
  __device__ void operator()(float* y, const float* x) const { y[0] = x[0] * x[1]; }
};
struct MaskedResidualOp {
  __device__ void operator()(float* y, const float* x) const { y[0] = __fadd_rn(__fmul_rn(x[0], x[1]), x[2]); }
};

}  // namespace cuda_detail

// mask [B·Tn, width] on the device: row (b, t) is global row mp.row_offset + b at absolute position starts[b] + t
// (starts: device int64 [B], or null for 0).
template <class T>
void fill_dropout_mask(const Cuda& ctx, T* mask, const DropoutMaskParams& mp, int64_t B, int64_t Tn, int64_t width,
                       const int64_t* starts) {
  using namespace cuda_detail;
  require_count("fill_dropout_mask", "B", B);
  require_count("fill_dropout_mask", "Tn", Tn);
  require_count("fill_dropout_mask", "width", width);
  require(mp.p >= 0 && mp.p < 1 && mp.p_path >= 0 && mp.p_path < 1, "fill_dropout_mask: rates p = ", mp.p,
          ", p_path = ", mp.p_path, " must lie in [0, 1)");
  const int64_t rows = B * Tn;
  if (rows == 0 || width == 0) return;
  require_rows("fill_dropout_mask", rows);
  MaskScalars s{};
  s.elem_stream = mp.elem_stream;
  s.path_stream = mp.path_stream;
  s.threshold = mp.threshold;
  s.path_threshold = mp.path_threshold;
  s.row_offset = mp.row_offset;
  s.keep_scale = 1.0f / static_cast<float>(1 - mp.p);
  s.path_scale = 1.0f / static_cast<float>(1 - mp.p_path);
  s.elem = mp.p > 0;
  s.path = mp.p_path > 0;
  const int threads = width >= 512 ? 256 : 128;
  fill_dropout_mask_kernel<T><<<static_cast<unsigned>(rows), threads, 0, ctx.stream>>>(mask, s, Tn, width, starts);
  RETNET_CUDA_CHECK_LAUNCH("fill_dropout_mask_kernel");
}

// x [n] *= mask
template <class T>
void apply_mask(const Cuda& ctx, T* x, const T* mask, int64_t n) {
  cuda_detail::MapArgs<T, 1, 2> a{{x}, {x, mask}};
  cuda_detail::launch_map(ctx, "apply_mask", a, n, cuda_detail::ApplyMaskOp{});
}

// y [n] = x · mask  (y may alias x)
template <class T>
void masked_copy(const Cuda& ctx, T* y, const T* x, const T* mask, int64_t n) {
  cuda_detail::MapArgs<T, 1, 2> a{{y}, {x, mask}};
  cuda_detail::launch_map(ctx, "masked_copy", a, n, cuda_detail::ApplyMaskOp{});
}

// branch [n] = branch · mask + residual (rounded after the product, as the CPU: no fused multiply-add)
template <class T>
void masked_residual_add(const Cuda& ctx, T* branch, const T* mask, const T* residual, int64_t n) {
  cuda_detail::MapArgs<T, 1, 3> a{{branch}, {branch, mask, residual}};
  cuda_detail::launch_map(ctx, "masked_residual_add", a, n, cuda_detail::MaskedResidualOp{});
}

}  // namespace retnet
