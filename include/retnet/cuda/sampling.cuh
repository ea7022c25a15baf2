#pragma once
// Token sampling on the GPU over logits [B, V] in device memory: greedy, temperature, top-k, top-p and an optional
// repetition penalty, with the selection rules of the CPU Sampler (infer/sampler.hpp). Only token ids cross to the
// host.
//
// One block per row. Greedy takes the arg-max, the lowest id among equal maxima (as the CPU). Otherwise every token
// gets the weight exp((l - max) / temperature) as a 32.32 fixed-point integer, so sums are exact and the result
// does not depend on the order threads add in: a seed gives the same tokens on every run and device. Top-k and
// top-p keep a prefix of the tokens ordered by logit (descending, then id ascending, the CPU's stable order): each
// prefix's last key is found by a radix select over the logits' bits (top-k by count, top-p by mass over all
// tokens, as the CPU computes it) and the shorter prefix is kept. The draw is a counter-based hash of the row's
// seed and its count of draws (no generator state), taken over the kept tokens in id order, as the CPU walks
// them. The random stream is not the CPU's: seeded GPU sampling reproduces itself, not the CPU's tokens.
// Repetition penalty (CTRL's): a logit of a token already in the row's prompt or output is divided by the penalty
// when positive and multiplied by it when negative.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#include "retnet/core/buffer.hpp"
#include "retnet/core/dropout.hpp"
#include "retnet/cuda/context.cuh"
#include "retnet/cuda/ops_common.cuh"
#include "retnet/infer/sampler.hpp"

namespace retnet {

namespace cuda_detail {

constexpr int kSampleThreads = 512;
constexpr int kSampleWarps = kSampleThreads / 32;

struct SampleParams {
  int greedy;
  float inv_temperature;
  int64_t top_k;  // 0 or >= vocab: no limit
  double top_p;   // 1: no limit
  float penalty;  // 1: none
};

// A uniform variate in [0, 1) from (seed, counter): 53 bits of a splitmix64 chain.
__device__ __forceinline__ double sample_uniform(uint64_t seed, uint64_t counter) {
  uint64_t h = dropout_mix(seed + 0x9E3779B97F4A7C15ULL);
  h = dropout_mix(h ^ (counter + 0xD1B54A32D192ED03ULL));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

// Order-preserving key of a float: a larger float has a larger key.
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct BestPair {
  float v;
  int i;
};
__device__ __forceinline__ BestPair better(BestPair a, BestPair b) {
  return (a.v > b.v || (a.v == b.v && a.i < b.i)) ? a : b;
}

struct SampleShared {
  BestPair best[kSampleWarps];
  unsigned long long u64[kSampleWarps];
  unsigned int u32[kSampleWarps];
  unsigned long long mass[256];
  unsigned int count[256];
  unsigned int prefix, mask, remaining;
  double need;
  int cutoff, found;
  long long chosen;
};

__device__ __forceinline__ unsigned long long block_sum_u64(unsigned long long x, SampleShared& sh) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) sh.u64[warp] = x;
  __syncthreads();
  unsigned long long t = 0;
  for (int w = 0; w < kSampleWarps; ++w) t += sh.u64[w];
  __syncthreads();
  return t;
}

__device__ __forceinline__ unsigned int block_sum_u32(unsigned int x, SampleShared& sh) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) sh.u32[warp] = x;
  __syncthreads();
  unsigned int t = 0;
  for (int w = 0; w < kSampleWarps; ++w) t += sh.u32[w];
  __syncthreads();
  return t;
}

// Exclusive prefix sum over the threads of the block, in thread order.
__device__ __forceinline__ unsigned long long block_exclusive_u64(unsigned long long x, SampleShared& sh) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  unsigned long long inc = x;
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long y = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += y;
  }
  __syncthreads();
  if (lane == 31) sh.u64[warp] = inc;
  __syncthreads();
  unsigned long long before = 0;
  for (int w = 0; w < warp; ++w) before += sh.u64[w];
  __syncthreads();
  return before + inc - x;
}

template <class T>
__device__ __forceinline__ float penalised(const T* lg, const uint8_t* seen, int i, float penalty) {
  float x = to_float(lg[i]);
  if (seen && seen[i]) x = x > 0.f ? x / penalty : x * penalty;
  return x;
}

// The index of the r-th (1-based) token of key `key` in id order, over chunked ranges [c0, c1) per thread.
template <class T>
__device__ int nth_tie(const T* lg, const uint8_t* seen, float penalty, int c0, int c1, uint32_t key, unsigned int r,
                       SampleShared& sh) {
  unsigned int n = 0;
  for (int i = c0; i < c1; ++i) n += order_key(penalised(lg, seen, i, penalty)) == key;
  const unsigned long long before = block_exclusive_u64(n, sh);
  if (before < r && before + n >= r) {
    unsigned int k = static_cast<unsigned int>(before);
    for (int i = c0; i < c1; ++i)
      if (order_key(penalised(lg, seen, i, penalty)) == key && ++k == r) {
        sh.cutoff = i;
        break;
      }
  }
  __syncthreads();
  return sh.cutoff;
}

template <class T>
__global__ void __launch_bounds__(kSampleThreads)
    sample_kernel(const T* __restrict__ logits, int vocab, SampleParams p, const uint64_t* __restrict__ seeds,
                  int64_t* __restrict__ counters, uint8_t* __restrict__ seen, int64_t* __restrict__ tokens,
                  int32_t* __restrict__ status) {
  __shared__ SampleShared sh;
  const int64_t row = blockIdx.x;
  const T* lg = logits + row * vocab;
  uint8_t* sn = seen ? seen + row * vocab : nullptr;
  const float pen = p.penalty;
  const int chunk = (vocab + kSampleThreads - 1) / kSampleThreads;
  const int c0 = min(vocab, static_cast<int>(threadIdx.x) * chunk), c1 = min(vocab, c0 + chunk);

  // Arg-max (lowest id among equal maxima) and a count of non-finite logits.
  BestPair best{-INFINITY, INT_MAX};
  unsigned int bad = 0;
  for (int i = c0; i < c1; ++i) {
    const float x = penalised(lg, sn, i, pen);
    if (!isfinite(x)) {
      ++bad;
      continue;
    }
    best = better(best, BestPair{x, i});
  }
  for (int o = 16; o > 0; o >>= 1) {
    const BestPair q{__shfl_xor_sync(0xffffffffu, best.v, o), __shfl_xor_sync(0xffffffffu, best.i, o)};
    best = better(best, q);
  }
  if (threadIdx.x % 32 == 0) sh.best[threadIdx.x / 32] = best;
  __syncthreads();
  for (int w = 0; w < kSampleWarps; ++w) best = better(best, sh.best[w]);
  bad = block_sum_u32(bad, sh);
  int64_t chosen = best.i;
  if (bad > 0 || best.i == INT_MAX) {
    if (threadIdx.x == 0) {
      tokens[row] = 0;
      status[row] = 1;
    }
    return;
  }
  if (!p.greedy) {
    const float mx = best.v;
    auto weight = [&](float x) -> unsigned long long {
      return static_cast<unsigned long long>(static_cast<double>(expf((x - mx) * p.inv_temperature)) * 4294967296.0);
    };
    unsigned long long part = 0;
    for (int i = c0; i < c1; ++i) part += weight(penalised(lg, sn, i, pen));
    const unsigned long long total = block_sum_u64(part, sh);

    // Length of the kept prefix and its last key and id (keep_all: no limit).
    bool keep_all = true;
    int64_t keep_len = vocab;
    uint32_t keep_key = 0;
    int keep_cut = vocab - 1;
    if (p.top_k > 0 && p.top_k < vocab) {
      // Radix select of the top_k-th key by count.
      if (threadIdx.x == 0) sh.prefix = 0, sh.mask = 0, sh.remaining = static_cast<unsigned int>(p.top_k);
      for (int shift = 24; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += kSampleThreads) sh.count[d] = 0;
        __syncthreads();
        const uint32_t prefix = sh.prefix, mask = sh.mask;
        for (int i = c0; i < c1; ++i) {
          const uint32_t k = order_key(penalised(lg, sn, i, pen));
          if ((k & mask) == prefix) atomicAdd(&sh.count[(k >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
          unsigned int rem = sh.remaining;
          int d = 255;
          for (; d > 0; --d) {
            if (sh.count[d] >= rem) break;
            rem -= sh.count[d];
          }
          sh.remaining = rem;
          sh.prefix = prefix | (static_cast<uint32_t>(d) << shift);
          sh.mask = mask | (255u << shift);
        }
        __syncthreads();
      }
      keep_all = false;
      keep_len = p.top_k;
      keep_key = sh.prefix;
      keep_cut = nth_tie(lg, sn, pen, c0, c1, keep_key, sh.remaining, sh);
    }
    if (p.top_p < 1.0) {
      // Radix select by mass: the key at which the mass of the tokens before it and its own reaches top_p.
      if (threadIdx.x == 0) sh.prefix = 0, sh.mask = 0, sh.need = p.top_p * static_cast<double>(total) * (1 - 1e-12);
      for (int shift = 24; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += kSampleThreads) sh.mass[d] = 0, sh.count[d] = 0;
        __syncthreads();
        const uint32_t prefix = sh.prefix, mask = sh.mask;
        for (int i = c0; i < c1; ++i) {
          const float x = penalised(lg, sn, i, pen);
          const uint32_t k = order_key(x);
          if ((k & mask) == prefix) {
            atomicAdd(&sh.mass[(k >> shift) & 255u], weight(x));
            atomicAdd(&sh.count[(k >> shift) & 255u], 1u);
          }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
          double need = sh.need;
          int d = 255, last = -1;
          for (; d >= 0; --d) {
            if (sh.count[d] == 0) continue;
            last = d;
            if (static_cast<double>(sh.mass[d]) >= need) break;
            need -= static_cast<double>(sh.mass[d]);
          }
          if (d < 0) d = last;  // rounding: the mass ran out; take the last non-empty bucket
          sh.need = need;
          sh.prefix = prefix | (static_cast<uint32_t>(d) << shift);
          sh.mask = mask | (255u << shift);
        }
        __syncthreads();
      }
      // Tokens before the key, and how many of its ties (equal weights) reach the mass still needed.
      const uint32_t key = sh.prefix;
      unsigned int above = 0, ties = 0;
      unsigned long long tie_weight = 0;
      for (int i = c0; i < c1; ++i) {
        const float x = penalised(lg, sn, i, pen);
        const uint32_t k = order_key(x);
        above += k > key;
        if (k == key) ++ties, tie_weight = weight(x);
      }
      above = block_sum_u32(above, sh);
      ties = block_sum_u32(ties, sh);
      if (threadIdx.x == 0) sh.u64[0] = 0;
      __syncthreads();
      if (tie_weight) sh.u64[0] = tie_weight;  // all ties have the same weight
      __syncthreads();
      const unsigned long long w = sh.u64[0];
      __syncthreads();
      const double need = sh.need;
      unsigned int take = w > 0 ? static_cast<unsigned int>(ceil(need / static_cast<double>(w))) : ties;
      take = max(1u, min(take, ties));
      const int64_t len = static_cast<int64_t>(above) + take;
      if (len < keep_len) {
        keep_all = false;
        keep_len = len;
        keep_key = key;
        keep_cut = nth_tie(lg, sn, pen, c0, c1, key, take, sh);
      }
    }
    auto kept = [&](int i, uint32_t k) { return keep_all || k > keep_key || (k == keep_key && i <= keep_cut); };

    // Draw over the kept tokens in id order.
    part = 0;
    for (int i = c0; i < c1; ++i) {
      const float x = penalised(lg, sn, i, pen);
      if (kept(i, order_key(x))) part += weight(x);
    }
    const unsigned long long kept_total = block_sum_u64(part, sh);
    const unsigned long long before = block_exclusive_u64(part, sh);
    const double u = sample_uniform(seeds[row], static_cast<uint64_t>(counters[row]));
    unsigned long long target = static_cast<unsigned long long>(u * static_cast<double>(kept_total));
    if (target >= kept_total) target = kept_total - 1;
    if (threadIdx.x == 0) sh.found = -1;
    __syncthreads();
    if (part > 0 && before <= target && target < before + part) {
      unsigned long long cum = before;
      for (int i = c0; i < c1; ++i) {
        const float x = penalised(lg, sn, i, pen);
        if (!kept(i, order_key(x))) continue;
        cum += weight(x);
        if (target < cum) {
          sh.found = i;
          break;
        }
      }
    }
    __syncthreads();
    if (sh.found >= 0) chosen = sh.found;  // else (cannot happen: the arg-max is kept with weight 2^32) the arg-max
  }
  if (threadIdx.x == 0) {
    tokens[row] = chosen;
    status[row] = 0;
    if (!p.greedy) counters[row] += 1;
    if (sn) sn[chosen] = 1;
  }
}

static __global__ void mark_seen_kernel(uint8_t* seen, const int64_t* ids, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) seen[ids[i]] = 1;
}

}  // namespace cuda_detail

// Sampling state of `rows` sequences on the device: each row's seed and count of draws (the counter of its random
// stream), the tokens seen by each row (with a repetition penalty), and the ids sampled. Buffers are allocated
// here; sample() only enqueues a kernel, so it can be captured into a CUDA graph.
class DeviceSampler {
 public:
  DeviceSampler(const Cuda& ctx, int64_t rows, int64_t vocab, const SamplingOptions& o, double repetition_penalty = 1.0)
      : ctx_(ctx), rows_(rows), vocab_(vocab), o_(o), penalty_(repetition_penalty) {
    o_.validate();
    require(rows > 0, "DeviceSampler: rows = ", rows, " must be positive");
    require(vocab > 0 && vocab <= INT_MAX, "DeviceSampler: vocab = ", vocab, " must lie in [1, ", INT_MAX, "]");
    require(std::isfinite(repetition_penalty) && repetition_penalty > 0,
            "DeviceSampler: repetition_penalty = ", repetition_penalty,
            " is invalid; it must be finite and > 0 (1: none)");
    seeds_ = Buffer<uint64_t, Cuda>(ctx, rows);
    counters_ = Buffer<int64_t, Cuda>(ctx, rows);
    status_ = Buffer<int32_t, Cuda>(ctx, rows);
    if (penalty_ != 1.0) seen_ = Buffer<uint8_t, Cuda>(ctx, checked_mul(rows, vocab, "DeviceSampler"));
    RETNET_CUDA_CHECK(cudaMallocHost(&host_, sizeof(int64_t) * static_cast<size_t>(rows)));
    RETNET_CUDA_CHECK(cudaMallocHost(&host_status_, sizeof(int32_t) * static_cast<size_t>(rows)));
  }
  ~DeviceSampler() {
    (void)cudaFreeHost(host_);
    (void)cudaFreeHost(host_status_);
  }
  DeviceSampler(const DeviceSampler&) = delete;
  DeviceSampler& operator=(const DeviceSampler&) = delete;

  int64_t rows() const { return rows_; }
  const SamplingOptions& options() const { return o_; }

  // Starts a new sequence in `row`: its seed, no draws yet, and its prompt as the tokens it has seen.
  void reset_row(int64_t row, uint64_t seed, const int64_t* prompt = nullptr, int64_t n = 0) {
    check_rows("DeviceSampler::reset_row", row, 1);
    seeds_.copy_from_host(&seed, 1, row);
    const int64_t zero = 0;
    counters_.copy_from_host(&zero, 1, row);
    if (seen_.empty()) return;
    std::vector<uint8_t> mark(static_cast<size_t>(vocab_), 0);
    for (int64_t i = 0; i < n; ++i) {
      require(prompt[i] >= 0 && prompt[i] < vocab_, "DeviceSampler::reset_row: prompt token ", prompt[i], " at ", i,
              " is outside [0, ", vocab_, ")");
      mark[static_cast<size_t>(prompt[i])] = 1;
    }
    seen_.copy_from_host(mark.data(), vocab_, row * vocab_);
  }

  // Enqueues the sampling of rows [first_row, first_row + n) of logits [rows, vocab] (device) into
  // tokens[first_row ..] (device). No host work beyond the launch.
  template <class T>
  void sample(const T* logits, int64_t* tokens, int64_t first_row, int64_t n) {
    using namespace cuda_detail;
    check_rows("DeviceSampler::sample", first_row, n);
    if (n == 0) return;
    SampleParams p{};
    p.greedy = o_.greedy || o_.temperature == 0 ? 1 : 0;
    p.inv_temperature = p.greedy ? 1.f : static_cast<float>(1.0 / o_.temperature);
    p.top_k = o_.top_k;
    p.top_p = o_.top_p;
    p.penalty = static_cast<float>(penalty_);
    sample_kernel<T><<<static_cast<unsigned>(n), kSampleThreads, 0, ctx_.stream>>>(
        logits + first_row * vocab_, static_cast<int>(vocab_), p, seeds_.data() + first_row,
        counters_.data() + first_row, seen_.empty() ? nullptr : seen_.data() + first_row * vocab_, tokens + first_row,
        status_.data() + first_row);
    RETNET_CUDA_CHECK_LAUNCH("sample_kernel");
  }

  // Waits for the stream and returns rows [first_row, first_row + n) of tokens (device) in host memory (valid until
  // the next fetch); throws naming the first row whose logits were not finite.
  const int64_t* fetch(const int64_t* tokens, int64_t first_row, int64_t n) {
    check_rows("DeviceSampler::fetch", first_row, n);
    const size_t b = static_cast<size_t>(n);
    RETNET_CUDA_CHECK(
        cudaMemcpyAsync(host_, tokens + first_row, sizeof(int64_t) * b, cudaMemcpyDeviceToHost, ctx_.stream));
    RETNET_CUDA_CHECK(cudaMemcpyAsync(host_status_, status_.data() + first_row, sizeof(int32_t) * b,
                                      cudaMemcpyDeviceToHost, ctx_.stream));
    RETNET_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    for (int64_t r = 0; r < n; ++r)
      require(host_status_[r] == 0, "DeviceSampler: the logits of row ", first_row + r,
              " hold a value that is not finite");
    return host_;
  }

  // The device buffers (for tests and custom loops).
  const int64_t* counters() const { return counters_.data(); }

 private:
  void check_rows(const char* op, int64_t first, int64_t n) const {
    require(first >= 0 && n >= 0 && first + n <= rows_, op, ": rows [", first, ", ", first + n,
            ") lie outside the sampler's ", rows_, " rows");
  }
  Cuda ctx_;
  int64_t rows_, vocab_;
  SamplingOptions o_;
  double penalty_;
  Buffer<uint64_t, Cuda> seeds_;
  Buffer<int64_t, Cuda> counters_;
  Buffer<int32_t, Cuda> status_;
  Buffer<uint8_t, Cuda> seen_;
  int64_t* host_ = nullptr;
  int32_t* host_status_ = nullptr;
};

}  // namespace retnet
