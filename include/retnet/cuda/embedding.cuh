#pragma once
// Token embedding lookup and its backward on the GPU: the CUDA side of cpu/embedding.hpp. Token ids live in device
// memory and are not checked here (validate_tokens checks them on the host before they are uploaded).
//
// The backward is deterministic: positions are sorted stably by token id (CUB radix sort), then every distinct
// token's gradient row is the sum of its positions' rows in position order, as the CPU adds them.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>

#include "retnet/cuda/context.cuh"
#include "retnet/cuda/ops_common.cuh"

namespace retnet {

namespace cuda_detail {

constexpr int kEmbeddingThreads = 128;

// out row i = scale · table row tokens[i]; blockIdx.y walks column chunks of kEmbeddingThreads · U.
template <class T, int U>
__global__ void embedding_forward_kernel(T* out, const int64_t* tokens, const T* table, int64_t n, int64_t d,
                                         float scale) {
  const int64_t j = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * U;
  if (j >= d) return;
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    float v[U];
    load_u<T, U>(table + tokens[i] * d + j, v);
#pragma unroll
    for (int e = 0; e < U; ++e) v[e] = scale * v[e];
    store_u<T, U>(out + i * d + j, v);
  }
}

template <class I>
__global__ void iota_kernel(I* p, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    p[i] = static_cast<I>(i);
}

// Sorted position s that starts a run of equal tokens adds the run's rows (ascending positions) to the token's row.
template <class T, class G, int U>
__global__ void embedding_backward_kernel(G* dtable, const T* dout, const int64_t* sorted_tokens,
                                          const int32_t* sorted_pos, int64_t n, int64_t d, float scale) {
  const int64_t j = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * U;
  if (j >= d) return;
  for (int64_t s = blockIdx.x; s < n; s += gridDim.x) {
    const int64_t tok = sorted_tokens[s];
    if (s > 0 && sorted_tokens[s - 1] == tok) continue;
    float acc[U];
    G* row = dtable + tok * d + j;
    load_u<G, U>(row, acc);
    for (int64_t q = s; q < n && sorted_tokens[q] == tok; ++q) {
      float g[U];
      load_u<T, U>(dout + static_cast<int64_t>(sorted_pos[q]) * d + j, g);
#pragma unroll
      for (int e = 0; e < U; ++e) acc[e] += scale * g[e];
    }
    store_u<G, U>(row, acc);
  }
}

inline dim3 embedding_grid(int64_t n, int64_t d, int unit) {
  const int64_t chunk = static_cast<int64_t>(kEmbeddingThreads) * unit;
  const int64_t chunks = (d + chunk - 1) / chunk;
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(n, static_cast<int64_t>(sm_count()) * 32 / chunks + 1));
  return dim3(static_cast<unsigned>(std::min<int64_t>(rows, n)), static_cast<unsigned>(chunks));
}

inline void check_embedding_sizes(const char* op, int64_t n, int64_t d) {
  require_count(op, "n", n);
  require_count(op, "d", d);
  require(d / (kEmbeddingThreads) < 65535, op, ": width d = ", d, " is too large for the column grid");
}

}  // namespace cuda_detail

// out [n, d] = scale · E[tokens[i]],  E [vocab, d], tokens: device int64 [n]
template <class T, class S>
void embedding_forward(const Cuda& ctx, T* out, const int64_t* tokens, const T* table, int64_t n, int64_t d, S scale) {
  using namespace cuda_detail;
  check_embedding_sizes("embedding_forward", n, d);
  if (n == 0 || d == 0) return;
  const float f = host_to_float(scale);
  if (d % Pack<T>::n == 0 && all_aligned16(out, table)) {
    constexpr int U = Pack<T>::n;
    embedding_forward_kernel<T, U>
        <<<embedding_grid(n, d, U), kEmbeddingThreads, 0, ctx.stream>>>(out, tokens, table, n, d, f);
  } else {
    embedding_forward_kernel<T, 1>
        <<<embedding_grid(n, d, 1), kEmbeddingThreads, 0, ctx.stream>>>(out, tokens, table, n, d, f);
  }
  RETNET_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

// dE[tokens[i]] += scale · dout[i], deterministic (each token's rows added in position order). The table gradient
// may be stored wider than dout (float for bf16 activations).
template <class T, class G, class S>
void embedding_backward(const Cuda& ctx, G* dtable, const T* dout, const int64_t* tokens, int64_t n, int64_t d,
                        S scale) {
  using namespace cuda_detail;
  check_embedding_sizes("embedding_backward", n, d);
  if (n == 0 || d == 0) return;
  require(n <= INT_MAX, "embedding_backward: n = ", n, " positions exceed ", INT_MAX);
  const int items = static_cast<int>(n);
  size_t sort_bytes = 0;
  RETNET_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), items, 0, 64, ctx.stream));
  const size_t keys_bytes = align_up(sizeof(int64_t) * static_cast<size_t>(n));
  const size_t pos_bytes = align_up(sizeof(int32_t) * static_cast<size_t>(n));
  Workspace ws(ctx.stream, keys_bytes + 2 * pos_bytes + align_up(sort_bytes));
  int64_t* sorted_tokens = ws.as<int64_t>();
  int32_t* pos = ws.as<int32_t>(keys_bytes);
  int32_t* sorted_pos = ws.as<int32_t>(keys_bytes + pos_bytes);
  void* sort_tmp = ws.as<void>(keys_bytes + 2 * pos_bytes);
  iota_kernel<int32_t><<<grid_for(n, 256), 256, 0, ctx.stream>>>(pos, n);
  RETNET_CUDA_CHECK_LAUNCH("iota_kernel");
  // Radix sort is stable: equal tokens keep their positions in ascending order.
  RETNET_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_tmp, sort_bytes, tokens, sorted_tokens, pos, sorted_pos, items,
                                                    0, 64, ctx.stream));
  const float f = host_to_float(scale);
  if (d % Pack<T>::n == 0 && all_aligned16(dtable, dout)) {
    constexpr int U = Pack<T>::n;
    embedding_backward_kernel<T, G, U><<<embedding_grid(n, d, U), kEmbeddingThreads, 0, ctx.stream>>>(
        dtable, dout, sorted_tokens, sorted_pos, n, d, f);
  } else {
    embedding_backward_kernel<T, G, 1><<<embedding_grid(n, d, 1), kEmbeddingThreads, 0, ctx.stream>>>(
        dtable, dout, sorted_tokens, sorted_pos, n, d, f);
  }
  RETNET_CUDA_CHECK_LAUNCH("embedding_backward_kernel");
}

}  // namespace retnet
