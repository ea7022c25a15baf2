#pragma once
// Softmax cross-entropy with an ignore index, fused with its gradient, on the GPU: the CUDA side of cpu/loss.hpp.
//
// Each row is cut into `splits` chunks (one chunk per block; several when there are few rows and a large vocab).
// Pass 1 finds each chunk's max and Σ exp(x − max) in float (online, one read) and saves the target's logit; pass 2
// combines the row's chunks in a fixed order and writes the gradient (so dlogits may alias logits: pass 1 has read
// everything before pass 2 writes); pass 3 adds the rows' losses in double in a fixed order. The call waits for the
// stream once and returns the sum. Targets outside [0, vocab) that are not the ignore index are never read through:
// their rows count as ignored, and the call then throws retnet::Error naming the first one.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "retnet/core/op_types.hpp"
#include "retnet/cuda/context.cuh"
#include "retnet/cuda/ops_common.cuh"

namespace retnet {

namespace cuda_detail {

constexpr int kLossThreads = 256;

struct MaxSum {
  float m, s;
};

// (max, Σ exp(x − max)) of the union of two sets; exact for empty sets (s = 0, m = −inf).
__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  if (b.m > a.m) {
    const MaxSum t = a;
    a = b;
    b = t;
  }
  if (b.s != 0.0f) a.s += b.s * expf(b.m - a.m);
  return a;
}

__device__ __forceinline__ MaxSum push(MaxSum a, float x) {
  if (x > a.m) {
    a.s = (a.s == 0.0f ? 0.0f : a.s * expf(a.m - x)) + 1.0f;
    a.m = x;
  } else {
    a.s += expf(x - a.m);
  }
  return a;
}

__device__ __forceinline__ bool counted_target(int64_t t, int64_t vocab, int64_t ignore_index) {
  return t != ignore_index && t >= 0 && t < vocab;
}

template <class T, int U>
__global__ void ce_partial_kernel(MaxSum* part, float* target_logit, const T* logits, const int64_t* targets,
                                  int64_t vocab, int64_t chunk, int splits, int64_t ignore_index) {
  __shared__ MaxSum scratch[32];
  const int64_t row = blockIdx.x / splits;
  const int split = static_cast<int>(blockIdx.x % splits);
  const int64_t t = targets[row];
  if (!counted_target(t, vocab, ignore_index)) return;
  const int64_t lo = split * chunk, hi = lo + chunk < vocab ? lo + chunk : vocab;
  const T* x = logits + row * vocab;
  if (threadIdx.x == 0 && t >= lo && t < hi) target_logit[row] = to_float(x[t]);
  MaxSum a{-INFINITY, 0.0f};
  for (int64_t j = lo + threadIdx.x * U; j < hi; j += blockDim.x * U) {
    float v[U];
    load_u<T, U>(x + j, v);
#pragma unroll
    for (int e = 0; e < U; ++e) a = push(a, v[e]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum b;
    b.m = __shfl_xor_sync(0xffffffffu, a.m, o);
    b.s = __shfl_xor_sync(0xffffffffu, a.s, o);
    a = combine(a, b);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = a;
  __syncthreads();
  if (threadIdx.x == 0) {
    MaxSum r = scratch[0];
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) r = combine(r, scratch[w]);
    part[blockIdx.x] = r;
  }
}

// status per row: 0 ignored, 1 counted, 2 a target outside [0, vocab) that is not the ignore index.
template <class T, int U>
__global__ void ce_grad_kernel(T* dlogits, T* row_loss, double* loss, int8_t* status, const MaxSum* part,
                               const float* target_logit, const T* logits, const int64_t* targets, int64_t vocab,
                               int64_t chunk, int splits, float grad_scale, int64_t ignore_index) {
  const int64_t row = blockIdx.x / splits;
  const int split = static_cast<int>(blockIdx.x % splits);
  const int64_t t = targets[row];
  const int64_t lo = split * chunk, hi = lo + chunk < vocab ? lo + chunk : vocab;
  T* g = dlogits ? dlogits + row * vocab : nullptr;
  if (!counted_target(t, vocab, ignore_index)) {
    if (g)
      for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) g[j] = from_float<T>(0.0f);
    if (split == 0 && threadIdx.x == 0) {
      if (row_loss) row_loss[row] = from_float<T>(0.0f);
      loss[row] = 0.0;
      status[row] = t == ignore_index ? 0 : 2;
    }
    return;
  }
  MaxSum a = part[row * splits];
  for (int s = 1; s < splits; ++s) a = combine(a, part[row * splits + s]);
  if (split == 0 && threadIdx.x == 0) {
    const double li = static_cast<double>(a.m) + log(static_cast<double>(a.s)) - static_cast<double>(target_logit[row]);
    if (row_loss) row_loss[row] = from_float<T>(static_cast<float>(li));
    loss[row] = li;
    status[row] = 1;
  }
  if (!g) return;
  const T* x = logits + row * vocab;
  const float inv = 1.0f / a.s;
  for (int64_t j = lo + threadIdx.x * U; j < hi; j += blockDim.x * U) {
    float v[U];
    load_u<T, U>(x + j, v);
#pragma unroll
    for (int e = 0; e < U; ++e) {
      const float p = expf(v[e] - a.m) * inv;
      v[e] = grad_scale * (p - (j + e == t ? 1.0f : 0.0f));
    }
    store_u<T, U>(g + j, v);
  }
}

struct LossTotals {
  double sum;
  int64_t count, bad, first_bad;
};

// One block adds the rows' losses in a fixed order.
template <class Totals>
__global__ void ce_total_kernel(Totals* out, const double* loss, const int8_t* status, int64_t n) {
  __shared__ double dscratch[32];
  __shared__ int64_t iscratch[3][32];
  double s = 0;
  int64_t count = 0, bad = 0, first_bad = INT64_MAX;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    s += loss[i];
    count += status[i] == 1;
    if (status[i] == 2) {
      ++bad;
      first_bad = i < first_bad ? i : first_bad;
    }
  }
  s = block_sum(s, dscratch);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  count = warp_sum(count);
  bad = warp_sum(bad);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const int64_t other = __shfl_xor_sync(0xffffffffu, first_bad, o);
    first_bad = other < first_bad ? other : first_bad;
  }
  if (lane == 0) iscratch[0][warp] = count, iscratch[1][warp] = bad, iscratch[2][warp] = first_bad;
  __syncthreads();
  if (threadIdx.x == 0) {
    Totals r{s, 0, 0, INT64_MAX};
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
      r.count += iscratch[0][w];
      r.bad += iscratch[1][w];
      r.first_bad = iscratch[2][w] < r.first_bad ? iscratch[2][w] : r.first_bad;
    }
    *out = r;
  }
}

// Enqueues the loss kernels; *totals (device) receives the sums. n > 0.
template <class T>
void ce_enqueue(const Cuda& ctx, const T* logits, const int64_t* targets, int64_t n, int64_t vocab, T* dlogits,
                double grad_scale, int64_t ignore_index, T* row_loss, LossTotals* totals) {
  // Few rows: cut each row so that the device still gets a few blocks per multiprocessor.
  const int64_t want = static_cast<int64_t>(sm_count()) * 8;
  const int64_t max_splits = std::max<int64_t>(1, std::min<int64_t>(64, vocab / 4096));
  const int64_t splits0 = std::min<int64_t>(max_splits, std::max<int64_t>(1, (want + n - 1) / n));
  const int64_t P = Pack<T>::n;
  const int64_t chunk = ((vocab + splits0 - 1) / splits0 + P - 1) / P * P;
  const int splits = static_cast<int>((vocab + chunk - 1) / chunk);
  require(n <= INT_MAX / splits, "cross_entropy: n = ", n, " rows exceed the grid limit");
  const unsigned blocks = static_cast<unsigned>(n * splits);

  const size_t part_bytes = align_up(sizeof(MaxSum) * blocks);
  const size_t tl_bytes = align_up(sizeof(float) * static_cast<size_t>(n));
  const size_t loss_bytes = align_up(sizeof(double) * static_cast<size_t>(n));
  const size_t status_bytes = align_up(static_cast<size_t>(n));
  Workspace ws(ctx.stream, part_bytes + tl_bytes + loss_bytes + status_bytes);
  MaxSum* part = ws.as<MaxSum>();
  float* target_logit = ws.as<float>(part_bytes);
  double* loss = ws.as<double>(part_bytes + tl_bytes);
  int8_t* status = ws.as<int8_t>(part_bytes + tl_bytes + loss_bytes);

  const bool packed = vocab % P == 0 && all_aligned16(logits, dlogits);
  const float gs = static_cast<float>(grad_scale);
  if (packed) {
    ce_partial_kernel<T, Pack<T>::n><<<blocks, kLossThreads, 0, ctx.stream>>>(part, target_logit, logits, targets,
                                                                              vocab, chunk, splits, ignore_index);
  } else {
    ce_partial_kernel<T, 1><<<blocks, kLossThreads, 0, ctx.stream>>>(part, target_logit, logits, targets, vocab, chunk,
                                                                     splits, ignore_index);
  }
  RETNET_CUDA_CHECK_LAUNCH("ce_partial_kernel");
  if (packed) {
    ce_grad_kernel<T, Pack<T>::n><<<blocks, kLossThreads, 0, ctx.stream>>>(
        dlogits, row_loss, loss, status, part, target_logit, logits, targets, vocab, chunk, splits, gs, ignore_index);
  } else {
    ce_grad_kernel<T, 1><<<blocks, kLossThreads, 0, ctx.stream>>>(
        dlogits, row_loss, loss, status, part, target_logit, logits, targets, vocab, chunk, splits, gs, ignore_index);
  }
  RETNET_CUDA_CHECK_LAUNCH("ce_grad_kernel");
  ce_total_kernel<LossTotals><<<1, 1024, 0, ctx.stream>>>(totals, loss, status, n);
  RETNET_CUDA_CHECK_LAUNCH("ce_total_kernel");
}

__global__ inline void add_loss_kernel(double* acc, const LossTotals* totals) { *acc += totals->sum; }

}  // namespace cuda_detail

// logits [n, vocab], targets [n] (device int64: ids or ignore_index). Returns the summed loss and count. If dlogits
// is given, writes dlogits [n, vocab] = grad_scale · (softmax − onehot) for counted rows, 0 for ignored rows
// (dlogits may alias logits); row_loss [n] (if given) receives each row's loss (0 for ignored rows). Waits for the
// stream.
template <class T>
LossSum cross_entropy_forward_backward(const Cuda& ctx, const T* logits, const int64_t* targets, int64_t n,
                                       int64_t vocab, T* dlogits = nullptr, double grad_scale = 1.0,
                                       int64_t ignore_index = kIgnoreIndex, T* row_loss = nullptr) {
  using namespace cuda_detail;
  require_count("cross_entropy", "n", n);
  require(vocab > 0, "cross_entropy: vocab = ", vocab, " must be positive");
  LossSum result;
  if (n == 0) return result;
  Workspace ws(ctx.stream, sizeof(LossTotals));
  LossTotals* totals = ws.as<LossTotals>();
  ce_enqueue(ctx, logits, targets, n, vocab, dlogits, grad_scale, ignore_index, row_loss, totals);
  LossTotals host{};
  RETNET_CUDA_CHECK(cudaMemcpyAsync(&host, totals, sizeof(LossTotals), cudaMemcpyDeviceToHost, ctx.stream));
  RETNET_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  if (host.bad > 0) {
    int64_t bad_id = 0;
    RETNET_CUDA_CHECK(cudaMemcpy(&bad_id, targets + host.first_bad, sizeof(int64_t), cudaMemcpyDeviceToHost));
    fail("cross_entropy: target ", bad_id, " at row ", host.first_bad, " is out of range; expected an id in [0, ",
         vocab, ") or the ignore index ", ignore_index, " (", host.bad, " such rows, counted as ignored)");
  }
  result.sum = host.sum;
  result.count = host.count;
  return result;
}

// The asynchronous form for training steps: adds the summed loss to *device_sum (a device double) and writes dlogits
// as above, without waiting for the GPU. The targets must be checked beforehand (validate_targets): an id out of
// range would count as ignored.
template <class T>
void cross_entropy_accumulate(const Cuda& ctx, const T* logits, const int64_t* targets, int64_t n, int64_t vocab,
                              T* dlogits, double grad_scale, double* device_sum) {
  using namespace cuda_detail;
  require_count("cross_entropy_accumulate", "n", n);
  require(vocab > 0, "cross_entropy_accumulate: vocab = ", vocab, " must be positive");
  require(device_sum != nullptr, "cross_entropy_accumulate: device_sum is null");
  if (n == 0) return;
  Workspace ws(ctx.stream, sizeof(LossTotals));
  LossTotals* totals = ws.as<LossTotals>();
  ce_enqueue(ctx, logits, targets, n, vocab, dlogits, grad_scale, kIgnoreIndex, static_cast<T*>(nullptr), totals);
  add_loss_kernel<<<1, 1, 0, ctx.stream>>>(device_sum, totals);
  RETNET_CUDA_CHECK_LAUNCH("add_loss_kernel");
}

}  // namespace retnet
