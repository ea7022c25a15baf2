#pragma once
// Rotation of query and key heads by their absolute positions, fused with the key scaling: the CUDA side of
// cpu/rotation.hpp (same pairing and angles, core/rotation.hpp).
#include <cuda_runtime.h>

#include <cstdint>

#include "retnet/cuda/context.cuh"
#include "retnet/cuda/ops_common.cuh"

namespace retnet {

namespace cuda_detail {

// One block per row (b, t); a thread rotates pairs (2k, 2k+1) of the row's heads, reading sin/cos once per pair.
template <class T, class C>
__global__ void rotate_heads_kernel(T* x, const C* sin, const C* cos, const int64_t* row_off, int64_t length,
                                    int64_t heads, int64_t dk, float scale, bool scaled, bool inverse) {
  const int64_t r = blockIdx.x;
  const int64_t b = r / length, t = r % length;
  const int64_t half = dk / 2;
  const int64_t pos = row_off[b] + t;
  const C* s = sin + pos * half;
  const C* c = cos + pos * half;
  T* xr = x + r * heads * dk;
  const int64_t pairs = heads * half;
  for (int64_t i = threadIdx.x; i < pairs; i += blockDim.x) {
    const int64_t h = i / half, k = i % half;
    const float sk = inverse ? -to_float(s[k]) : to_float(s[k]);
    const float ck = to_float(c[k]);
    T* p = xr + h * dk + 2 * k;
    float x0 = to_float(p[0]), x1 = to_float(p[1]);
    if (scaled && !inverse) x0 *= scale, x1 *= scale;
    float y0 = __fsub_rn(__fmul_rn(x0, ck), __fmul_rn(x1, sk));
    float y1 = __fadd_rn(__fmul_rn(x1, ck), __fmul_rn(x0, sk));
    if (scaled && inverse) y0 *= scale, y1 *= scale;
    p[0] = from_float<T>(y0);
    p[1] = from_float<T>(y1);
  }
}

}  // namespace cuda_detail

// x [batch, length, heads, dk] in place on the device. Row (b, t) uses table row row_off[b] + t (row_off: device
// int64 [batch]) of sin/cos [rows, dk/2]. Forward (inverse = false): x <- R(scale · x). Backward (inverse = true):
// x <- scale · Rᵀ(x). The tables and the scale may be wider than x (float for bf16 activations).
template <class T, class C>
void rotate_heads(const Cuda& ctx, T* x, const C* sin, const C* cos, const int64_t* row_off, int64_t batch,
                  int64_t length, int64_t heads, int64_t dk, C scale, bool inverse) {
  using namespace cuda_detail;
  require_count("rotate_heads", "batch", batch);
  require_count("rotate_heads", "length", length);
  require_count("rotate_heads", "heads", heads);
  require(dk >= 0 && dk % 2 == 0, "rotate_heads: dk = ", dk, " must be non-negative and even");
  const int64_t rows = batch * length;
  if (rows == 0 || heads == 0 || dk == 0) return;
  require_rows("rotate_heads", rows);
  const float f = host_to_float(scale);
  const int64_t pairs = heads * dk / 2;
  const int threads = pairs >= 256 ? 256 : 128;
  rotate_heads_kernel<T, C><<<static_cast<unsigned>(rows), threads, 0, ctx.stream>>>(x, sin, cos, row_off, length,
                                                                                     heads, dk, f, f != 1.0f, inverse);
  RETNET_CUDA_CHECK_LAUNCH("rotate_heads_kernel");
}

}  // namespace retnet
