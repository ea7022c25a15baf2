#pragma once
// Shared pieces of the element-wise and row-wise CUDA ops: conversions between the storage type (float or bf16)
// and float arithmetic, 16-byte packs for vectorised loads, fixed-order block reductions and launch sizes.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "retnet/core/error.hpp"
#include "retnet/cuda/context.cuh"

namespace retnet {
namespace cuda_detail {

template <class T>
inline constexpr bool is_op_storage_v = std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>;

template <class T>
__device__ __forceinline__ float to_float(T x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else
    return __bfloat162float(x);
}

template <class T>
__device__ __forceinline__ T from_float(float x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else
    return __float2bfloat16_rn(x);
}

// Host-side conversion of a scalar argument to float (bf16 arguments through their float value).
template <class T>
inline float host_to_float(T x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else
    return __bfloat162float(x);
}

// 16 bytes of T: 4 floats or 8 bf16.
template <class T>
struct alignas(16) Pack {
  static constexpr int n = static_cast<int>(16 / sizeof(T));
  T v[n];
};

template <class T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
  Pack<T> r;
  *reinterpret_cast<uint4*>(&r) = *reinterpret_cast<const uint4*>(p);
  return r;
}

template <class T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& r) {
  *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(&r);
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// True when every non-null pointer is 16-byte aligned (the packed paths need it).
template <class... P>
inline bool all_aligned16(const P*... p) {
  return ((p == nullptr || aligned16(p)) && ...);
}

// Σ over the warp; every lane gets the result. The butterfly order is fixed, so the result is deterministic.
template <class A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <class A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Σ over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. `scratch` holds 32
// values; the call ends with a barrier after its last read, so it may be reused at once.
template <class A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  A t = lane < warps ? scratch[lane] : A(0);
  t = warp_sum(t);
  __syncthreads();
  return t;
}

// U consecutive elements as float: one 16-byte pack (U = Pack<T>::n) or one element (U = 1).
template <class T, int U>
__device__ __forceinline__ void load_u(const T* p, float (&v)[U]) {
  if constexpr (U == 1) {
    v[0] = to_float(*p);
  } else {
    constexpr int P = Pack<T>::n;
    static_assert(U % P == 0, "a unit is one element or whole packs");
#pragma unroll
    for (int q = 0; q < U / P; ++q) {
      const Pack<T> k = load_pack(p + q * P);
#pragma unroll
      for (int e = 0; e < P; ++e) v[q * P + e] = to_float(k.v[e]);
    }
  }
}

template <class T, int U>
__device__ __forceinline__ void store_u(T* p, const float (&v)[U]) {
  if constexpr (U == 1) {
    *p = from_float<T>(v[0]);
  } else {
    constexpr int P = Pack<T>::n;
    static_assert(U % P == 0, "a unit is one element or whole packs");
#pragma unroll
    for (int q = 0; q < U / P; ++q) {
      Pack<T> k;
#pragma unroll
      for (int e = 0; e < P; ++e) k.v[e] = from_float<T>(v[q * P + e]);
      store_pack(p + q * P, k);
    }
  }
}

// Number of multiprocessors of the current device (cached per device).
inline int sm_count() {
  static int counts[64] = {};
  int dev = 0;
  RETNET_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) dev = 0;
  if (counts[dev] == 0) {
    int sms = 0;
    RETNET_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    counts[dev] = std::max(sms, 1);
  }
  return counts[dev];
}

// Blocks for a grid-stride loop over `work` items with `per_block` items per block and round: enough to fill the
// device a few times over, never more than the work needs.
inline unsigned grid_for(int64_t work, int64_t per_block) {
  const int64_t need = (work + per_block - 1) / per_block;
  const int64_t cap = static_cast<int64_t>(sm_count()) * 16;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(need, cap)));
}

// Rows of a one-block-per-row kernel go on grid.x (up to 2^31 - 1 blocks).
inline void require_rows(const char* op, int64_t rows) {
  require(rows <= static_cast<int64_t>(INT_MAX), op, ": ", rows, " rows exceed the grid limit of ", INT_MAX);
}

// Sizes are counts: negative ones are rejected, zero means nothing to do.
inline void require_count(const char* op, const char* name, int64_t n) {
  require(n >= 0, op, ": ", name, " = ", n, " must not be negative");
}

// Element-wise map over n elements: outputs out[0..NOut) and inputs in[0..NIn) of the same length; f(y, x) takes
// the inputs as float and writes the outputs as float. An output may alias an input (each element is read before
// it is written, by the same thread).
template <class T, int NOut, int NIn>
struct MapArgs {
  T* out[NOut];
  const T* in[NIn];
};

template <class T, int NOut, int NIn, class F>
__global__ void map_kernel(MapArgs<T, NOut, NIn> a, int64_t n, bool packed, F f) {
  constexpr int P = Pack<T>::n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_from = 0;
  if (packed) {
    const int64_t packs = n / P;
    for (int64_t p = first; p < packs; p += stride) {
      Pack<T> x[NIn];
#pragma unroll
      for (int k = 0; k < NIn; ++k) x[k] = load_pack(a.in[k] + p * P);
      Pack<T> y[NOut];
#pragma unroll
      for (int e = 0; e < P; ++e) {
        float xf[NIn], yf[NOut];
#pragma unroll
        for (int k = 0; k < NIn; ++k) xf[k] = to_float(x[k].v[e]);
        f(yf, xf);
#pragma unroll
        for (int k = 0; k < NOut; ++k) y[k].v[e] = from_float<T>(yf[k]);
      }
#pragma unroll
      for (int k = 0; k < NOut; ++k) store_pack(a.out[k] + p * P, y[k]);
    }
    scalar_from = packs * P;
  }
  for (int64_t i = scalar_from + first; i < n; i += stride) {
    float xf[NIn], yf[NOut];
#pragma unroll
    for (int k = 0; k < NIn; ++k) xf[k] = to_float(a.in[k][i]);
    f(yf, xf);
#pragma unroll
    for (int k = 0; k < NOut; ++k) a.out[k][i] = from_float<T>(yf[k]);
  }
}

template <class T, int NOut, int NIn, class F>
void launch_map(const Cuda& ctx, const char* op, const MapArgs<T, NOut, NIn>& a, int64_t n, F f) {
  require_count(op, "n", n);
  if (n == 0) return;
  bool packed = true;
  for (int k = 0; k < NOut; ++k) packed = packed && aligned16(a.out[k]);
  for (int k = 0; k < NIn; ++k) packed = packed && aligned16(a.in[k]);
  constexpr int threads = 256;
  const unsigned blocks = grid_for(packed ? (n + Pack<T>::n - 1) / Pack<T>::n : n, threads);
  map_kernel<T, NOut, NIn><<<blocks, threads, 0, ctx.stream>>>(a, n, packed, f);
  RETNET_CUDA_CHECK_LAUNCH(op);
}

}  // namespace cuda_detail
}  // namespace retnet
