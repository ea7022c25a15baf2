#pragma once
// RMSNorm and LayerNorm over the last dimension on the GPU: the CUDA side of cpu/norm.hpp. One block per row
// (rows beyond the grid loop), float arithmetic for every storage type. The weight and bias gradients accumulate
// per block in a fixed order into a workspace and are then added column by column in a fixed order: the same bits
// on every run, no atomics.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "retnet/cuda/context.cuh"
#include "retnet/cuda/ops_common.cuh"

namespace retnet {

namespace cuda_detail {

constexpr int kNormThreads = 256;

// Blocks of a row kernel: at most 1024 (each loops over its rows); a function of n alone, so the per-block partial
// sums, and the weight gradients made from them, do not depend on the device.
inline unsigned norm_blocks(int64_t n) { return static_cast<unsigned>(std::min<int64_t>(n, 1024)); }

template <class T, int U>
__global__ void rmsnorm_forward_kernel(T* y, T* rstd, const T* x, const T* w, int64_t n, int64_t c, float eps) {
  __shared__ float scratch[32];
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const T* xr = x + i * c;
    T* yr = y + i * c;
    float ss = 0;
    for (int64_t j = threadIdx.x * U; j < c; j += blockDim.x * U) {
      float xv[U];
      load_u<T, U>(xr + j, xv);
#pragma unroll
      for (int e = 0; e < U; ++e) ss += xv[e] * xv[e];
    }
    ss = block_sum(ss, scratch);
    const float r = 1.0f / sqrtf(ss / static_cast<float>(c) + eps);
    if (rstd && threadIdx.x == 0) rstd[i] = from_float<T>(r);
    for (int64_t j = threadIdx.x * U; j < c; j += blockDim.x * U) {
      float xv[U], wv[U];
      load_u<T, U>(xr + j, xv);
      if (w) load_u<T, U>(w + j, wv);
#pragma unroll
      for (int e = 0; e < U; ++e) xv[e] = w ? xv[e] * r * wv[e] : xv[e] * r;
      store_u<T, U>(yr + j, xv);
    }
  }
}

// dx of every row; with dw_part, each block adds dy ⊙ x · r of its rows (in row order) into its own row of
// dw_part [gridDim.x, c] (every element is owned by one thread, so no two threads touch it).
template <class T, int U>
__global__ void rmsnorm_backward_kernel(T* dx, float* dw_part, const T* dy, const T* x, const T* w, const T* rstd,
                                        int64_t n, int64_t c, bool accumulate) {
  __shared__ float scratch[32];
  float* part = dw_part ? dw_part + static_cast<int64_t>(blockIdx.x) * c : nullptr;
  if (part)
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) part[j] = 0.0f;
  // The zeroing and the updates below use different thread-to-column maps when U > 1.
  __syncthreads();
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const T* xr = x + i * c;
    const T* dyr = dy + i * c;
    T* dxr = dx + i * c;
    const float r = to_float(rstd[i]);
    float dot = 0;
    for (int64_t j = threadIdx.x * U; j < c; j += blockDim.x * U) {
      float xv[U], gv[U], wv[U];
      load_u<T, U>(xr + j, xv);
      load_u<T, U>(dyr + j, gv);
      if (w) load_u<T, U>(w + j, wv);
#pragma unroll
      for (int e = 0; e < U; ++e) dot += (w ? gv[e] * wv[e] : gv[e]) * xv[e];
      if (part) {
#pragma unroll
        for (int e = 0; e < U; ++e) part[j + e] += gv[e] * xv[e] * r;
      }
    }
    dot = block_sum(dot, scratch);
    const float k = r * r * r * dot / static_cast<float>(c);
    for (int64_t j = threadIdx.x * U; j < c; j += blockDim.x * U) {
      float xv[U], gv[U], wv[U], out[U];
      load_u<T, U>(xr + j, xv);
      load_u<T, U>(dyr + j, gv);
      if (w) load_u<T, U>(w + j, wv);
      if (accumulate) load_u<T, U>(dxr + j, out);
#pragma unroll
      for (int e = 0; e < U; ++e) {
        const float g = (w ? gv[e] * wv[e] : gv[e]) * r - xv[e] * k;
        out[e] = accumulate ? out[e] + g : g;
      }
      store_u<T, U>(dxr + j, out);
    }
  }
}

template <class T, int U>
__global__ void layernorm_forward_kernel(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t n,
                                         int64_t c, float eps) {
  __shared__ float scratch[32];
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const T* xr = x + i * c;
    T* yr = y + i * c;
    float s = 0;
    for (int64_t j = threadIdx.x * U; j < c; j += blockDim.x * U) {
      float xv[U];
      load_u<T, U>(xr + j, xv);
#pragma unroll
      for (int e = 0; e < U; ++e) s += xv[e];
    }
    const float m = block_sum(s, scratch) / static_cast<float>(c);
    float var = 0;
    for (int64_t j = threadIdx.x * U; j < c; j += blockDim.x * U) {
      float xv[U];
      load_u<T, U>(xr + j, xv);
#pragma unroll
      for (int e = 0; e < U; ++e) var += (xv[e] - m) * (xv[e] - m);
    }
    var = block_sum(var, scratch) / static_cast<float>(c);
    const float r = 1.0f / sqrtf(var + eps);
    if (threadIdx.x == 0) {
      if (mean) mean[i] = from_float<T>(m);
      if (rstd) rstd[i] = from_float<T>(r);
    }
    for (int64_t j = threadIdx.x * U; j < c; j += blockDim.x * U) {
      float xv[U], wv[U], bv[U];
      load_u<T, U>(xr + j, xv);
      if (w) load_u<T, U>(w + j, wv);
      if (b) load_u<T, U>(b + j, bv);
#pragma unroll
      for (int e = 0; e < U; ++e) {
        float v = (xv[e] - m) * r;
        if (w) v *= wv[e];
        if (b) v += bv[e];
        xv[e] = v;
      }
      store_u<T, U>(yr + j, xv);
    }
  }
}

// dx of every row; dw_part / db_part [gridDim.x, c] (either may be null) as in rmsnorm_backward_kernel.
template <class T, int U>
__global__ void layernorm_backward_kernel(T* dx, float* dw_part, float* db_part, const T* dy, const T* x, const T* w,
                                          const T* mean, const T* rstd, int64_t n, int64_t c, bool accumulate) {
  __shared__ float scratch[32];
  float* pw = dw_part ? dw_part + static_cast<int64_t>(blockIdx.x) * c : nullptr;
  float* pb = db_part ? db_part + static_cast<int64_t>(blockIdx.x) * c : nullptr;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    if (pw) pw[j] = 0.0f;
    if (pb) pb[j] = 0.0f;
  }
  __syncthreads();
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const T* xr = x + i * c;
    const T* dyr = dy + i * c;
    T* dxr = dx + i * c;
    const float m = to_float(mean[i]), r = to_float(rstd[i]);
    float s1 = 0, s2 = 0;
    for (int64_t j = threadIdx.x * U; j < c; j += blockDim.x * U) {
      float xv[U], gv[U], wv[U];
      load_u<T, U>(xr + j, xv);
      load_u<T, U>(dyr + j, gv);
      if (w) load_u<T, U>(w + j, wv);
#pragma unroll
      for (int e = 0; e < U; ++e) {
        const float g = w ? gv[e] * wv[e] : gv[e];
        s1 += g;
        s2 += g * (xv[e] - m) * r;
        if (pw) pw[j + e] += gv[e] * (xv[e] - m) * r;
        if (pb) pb[j + e] += gv[e];
      }
    }
    s1 = block_sum(s1, scratch) / static_cast<float>(c);
    s2 = block_sum(s2, scratch) / static_cast<float>(c);
    for (int64_t j = threadIdx.x * U; j < c; j += blockDim.x * U) {
      float xv[U], gv[U], wv[U], out[U];
      load_u<T, U>(xr + j, xv);
      load_u<T, U>(dyr + j, gv);
      if (w) load_u<T, U>(w + j, wv);
      if (accumulate) load_u<T, U>(dxr + j, out);
#pragma unroll
      for (int e = 0; e < U; ++e) {
        const float g = w ? gv[e] * wv[e] : gv[e];
        const float v = r * (g - s1 - (xv[e] - m) * r * s2);
        out[e] = accumulate ? out[e] + v : v;
      }
      store_u<T, U>(dxr + j, out);
    }
  }
}

// dst [c] += Σ_b part [b, c] over b = 0 .. parts-1 in a fixed order: 32 columns per block, 32 lanes of rows that
// each add every 32nd partial row, then lane sums added in lane order.
template <class T>
__global__ void add_column_sums_kernel(T* dst, const float* part, int64_t parts, int64_t c) {
  __shared__ float tile[32][33];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float acc = 0;
  if (j < c)
    for (int64_t b = threadIdx.y; b < parts; b += 32) acc += part[b * c + j];
  tile[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < c) {
    float s = 0;
    for (int l = 0; l < 32; ++l) s += tile[l][threadIdx.x];
    dst[j] = from_float<T>(to_float(dst[j]) + s);
  }
}

template <class T>
void add_column_sums(const Cuda& ctx, T* dst, const float* part, int64_t parts, int64_t c) {
  const unsigned blocks = static_cast<unsigned>((c + 31) / 32);
  add_column_sums_kernel<T><<<blocks, dim3(32, 32), 0, ctx.stream>>>(dst, part, parts, c);
  RETNET_CUDA_CHECK_LAUNCH("add_column_sums_kernel");
}

// Packs when every row starts on a 16-byte boundary.
template <class T, class... P>
bool rows_packed(int64_t c, const P*... p) {
  return c % Pack<T>::n == 0 && all_aligned16(p...);
}

inline void check_norm_sizes(const char* op, int64_t n, int64_t c) {
  require_count(op, "n", n);
  require(c > 0 || n == 0, op, ": width c = ", c, " must be positive");
  require(c <= INT_MAX, op, ": width c = ", c, " exceeds ", INT_MAX);
}

}  // namespace cuda_detail

// y [n, c] = x · r (· w),  r = (mean(x²) + eps)^-½ saved in rstd [n] (null: not saved).  w may be null.
// y may alias x.
template <class T>
void rmsnorm_forward(const Cuda& ctx, T* y, T* rstd, const T* x, const T* w, int64_t n, int64_t c, double eps) {
  using namespace cuda_detail;
  check_norm_sizes("rmsnorm_forward", n, c);
  if (n == 0) return;
  const float e = static_cast<float>(eps);
  if (rows_packed<T>(c, y, x, w))
    rmsnorm_forward_kernel<T, Pack<T>::n><<<norm_blocks(n), kNormThreads, 0, ctx.stream>>>(y, rstd, x, w, n, c, e);
  else
    rmsnorm_forward_kernel<T, 1><<<norm_blocks(n), kNormThreads, 0, ctx.stream>>>(y, rstd, x, w, n, c, e);
  RETNET_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
}

// dx [n, c] (overwrite, or add when accumulate) = r·dŷ − x·r³·(Σ dŷ⊙x)/c with dŷ = dy⊙w;
// dw [c] += Σ_rows dy ⊙ x · r (skipped if null).  dx may alias dy only when accumulate is false.
template <class T, class G>
void rmsnorm_backward(const Cuda& ctx, T* dx, G* dw, const T* dy, const T* x, const T* w, const T* rstd, int64_t n,
                      int64_t c, bool accumulate = false) {
  using namespace cuda_detail;
  check_norm_sizes("rmsnorm_backward", n, c);
  if (n == 0) return;
  require(rstd != nullptr, "rmsnorm_backward: rstd is null; the backward needs the forward's saved statistics");
  const unsigned blocks = norm_blocks(n);
  Workspace ws(ctx.stream, dw ? sizeof(float) * blocks * static_cast<size_t>(c) : 0);
  float* part = dw ? ws.as<float>() : nullptr;
  if (rows_packed<T>(c, dx, dy, x, w))
    rmsnorm_backward_kernel<T, Pack<T>::n>
        <<<blocks, kNormThreads, 0, ctx.stream>>>(dx, part, dy, x, w, rstd, n, c, accumulate);
  else
    rmsnorm_backward_kernel<T, 1><<<blocks, kNormThreads, 0, ctx.stream>>>(dx, part, dy, x, w, rstd, n, c, accumulate);
  RETNET_CUDA_CHECK_LAUNCH("rmsnorm_backward_kernel");
  if (dw) add_column_sums(ctx, dw, part, blocks, c);
}

// LayerNorm: y = (x − μ)·r·w + b, r = (var + eps)^-½; saves mean [n] and rstd [n] (either null: not saved).
// w, b may be null.  y may alias x.
template <class T>
void layernorm_forward(const Cuda& ctx, T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t n,
                       int64_t c, double eps) {
  using namespace cuda_detail;
  check_norm_sizes("layernorm_forward", n, c);
  if (n == 0) return;
  const float e = static_cast<float>(eps);
  if (rows_packed<T>(c, y, x, w, b))
    layernorm_forward_kernel<T, Pack<T>::n>
        <<<norm_blocks(n), kNormThreads, 0, ctx.stream>>>(y, mean, rstd, x, w, b, n, c, e);
  else
    layernorm_forward_kernel<T, 1><<<norm_blocks(n), kNormThreads, 0, ctx.stream>>>(y, mean, rstd, x, w, b, n, c, e);
  RETNET_CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
}

// dx = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂⊙x̂)), dx̂ = dy⊙w;  dw += Σ dy⊙x̂;  db += Σ dy (dw, db skipped if null).
template <class T, class G>
void layernorm_backward(const Cuda& ctx, T* dx, G* dw, G* db, const T* dy, const T* x, const T* w, const T* mean,
                        const T* rstd, int64_t n, int64_t c, bool accumulate = false) {
  using namespace cuda_detail;
  check_norm_sizes("layernorm_backward", n, c);
  if (n == 0) return;
  require(mean != nullptr && rstd != nullptr,
          "layernorm_backward: mean or rstd is null; the backward needs the forward's saved statistics");
  const unsigned blocks = norm_blocks(n);
  const size_t part_bytes = align_up(sizeof(float) * blocks * static_cast<size_t>(c));
  Workspace ws(ctx.stream, (dw ? part_bytes : 0) + (db ? part_bytes : 0));
  float* pw = dw ? ws.as<float>() : nullptr;
  float* pb = db ? ws.as<float>(dw ? part_bytes : 0) : nullptr;
  if (rows_packed<T>(c, dx, dy, x, w))
    layernorm_backward_kernel<T, Pack<T>::n>
        <<<blocks, kNormThreads, 0, ctx.stream>>>(dx, pw, pb, dy, x, w, mean, rstd, n, c, accumulate);
  else
    layernorm_backward_kernel<T, 1>
        <<<blocks, kNormThreads, 0, ctx.stream>>>(dx, pw, pb, dy, x, w, mean, rstd, n, c, accumulate);
  RETNET_CUDA_CHECK_LAUNCH("layernorm_backward_kernel");
  if (dw) add_column_sums(ctx, dw, pw, blocks, c);
  if (db) add_column_sums(ctx, db, pb, blocks, c);
}

}  // namespace retnet
