// Chunkwise retention on the GPU, forward and forward+backward (the forward handing its saved states to the backward;
// bf16 also without, fwdbwd_recompute), bf16, float and float with allow_tf32, raw mode (fla's semantics), on the
// six benchmark shapes (bench/results/cuda_retention.md). Times with CUDA events (manual time); counters: FLOP/s,
// bytes/s and the fraction of the roofline floor (790 TFLOP/s bf16 dense / 4.3 TB/s, the rates measured on the H200).
// fla is timed by bench/fla_bench.py in the same call, on the same machine.
#include <benchmark/benchmark.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "retnet/cuda.cuh"

namespace {

struct Buf {
  void* p = nullptr;
  explicit Buf(size_t bytes) { RETNET_CUDA_CHECK(cudaMalloc(&p, bytes)); }
  ~Buf() { (void)cudaFree(p); }
};

__global__ void fill_kernel(float* x, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 16;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = (static_cast<float>(h & 0xFFFFFF) / 16777216.f - 0.5f) * scale;
  }
}
__global__ void to_bf16_kernel(const float* x, __nv_bfloat16* y, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16(x[i]);
}

template <class E>
void fill(void* dst, size_t n, uint32_t seed, float scale) {
  if constexpr (std::is_same_v<E, float>) {
    fill_kernel<<<1024, 256>>>(static_cast<float*>(dst), n, seed, scale);
  } else {
    Buf tmp(n * sizeof(float));
    fill_kernel<<<1024, 256>>>(static_cast<float*>(tmp.p), n, seed, scale);
    to_bf16_kernel<<<1024, 256>>>(static_cast<float*>(tmp.p), static_cast<__nv_bfloat16*>(dst), n);
    RETNET_CUDA_CHECK(cudaDeviceSynchronize());
  }
  RETNET_CUDA_CHECK(cudaGetLastError());
}

// What one iteration runs: the forward, or forward and backward with the forward's saved states handed over (as a
// trainer runs them), or forward and backward with the backward recomputing them (no RetentionSaved).
enum class Pass { forward, forward_backward, forward_backward_recompute };

// tf32: float storage with Cuda::allow_tf32 (one tf32 product per product, fla's float arithmetic).
template <class E>
void bm_retention(benchmark::State& state, Pass pass, bool tf32 = false) {
  const bool backward = pass != Pass::forward;
  const int64_t B = state.range(0), T = state.range(1), H = state.range(2), D = state.range(3);
  const int64_t C = 64;
  retnet::RetentionOptions opt;
  opt.heads = H;
  opt.key_dim = D;
  opt.value_dim = D;
  opt.chunk_size = C;
  opt.normalization = retnet::Normalization::raw;
  if (H > 32) opt.decay_schedule = retnet::DecaySchedule::paper;  // torchscale's gamma_h rounds to 1 past h = 47
  const retnet::RetentionConfig cfg(opt);
  const size_t n = static_cast<size_t>(B * T * H * D);
  Buf q(n * sizeof(E)), k(n * sizeof(E)), v(n * sizeof(E)), o(n * sizeof(E)), d_o(n * sizeof(E));
  Buf dq(n * sizeof(E)), dk(n * sizeof(E)), dv(n * sizeof(E));
  fill<E>(q.p, n, 1, 1.f);
  fill<E>(k.p, n, 2, 1.f / std::sqrt(static_cast<float>(D)));
  fill<E>(v.p, n, 3, 1.f);
  fill<E>(d_o.p, n, 4, 1.f);
  const retnet::Shape s{B, T, H, D};
  retnet::RetentionInputs<E, retnet::Device, float> in;
  in.q = {static_cast<const E*>(q.p), s};
  in.k = {static_cast<const E*>(k.p), s};
  in.v = {static_cast<const E*>(v.p), s};
  retnet::RetentionOutputs<E, retnet::Device, float> out;
  out.o = {static_cast<E*>(o.p), s};
  retnet::RetentionOutputGrads<E, retnet::Device, float> go;
  go.d_o = {static_cast<const E*>(d_o.p), s};
  retnet::RetentionInputGrads<E, retnet::Device, float> gi;
  gi.dq = {static_cast<E*>(dq.p), s};
  gi.dk = {static_cast<E*>(dk.p), s};
  gi.dv = {static_cast<E*>(dv.p), s};
  cudaStream_t stream;
  RETNET_CUDA_CHECK(cudaStreamCreate(&stream));
  const retnet::Cuda ctx{stream, nullptr, tf32};
  retnet::RetentionSaved saved;
  retnet::RetentionSaved* keep = pass == Pass::forward_backward ? &saved : nullptr;
  auto once = [&] {
    retnet::retention_forward(ctx, retnet::Form::chunkwise, cfg, in, out, keep);
    if (backward) retnet::retention_backward(ctx, retnet::Form::chunkwise, cfg, in, go, gi, keep);
  };
  for (int i = 0; i < 3; ++i) once();
  RETNET_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaEvent_t e0, e1;
  RETNET_CUDA_CHECK(cudaEventCreate(&e0));
  RETNET_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<double> times;
  for (auto _ : state) {
    RETNET_CUDA_CHECK(cudaEventRecord(e0, stream));
    once();
    RETNET_CUDA_CHECK(cudaEventRecord(e1, stream));
    RETNET_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    RETNET_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    state.SetIterationTime(ms * 1e-3);
    times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  const double med_s = times.empty() ? 0 : times[times.size() / 2] * 1e-3;
  const double flop = static_cast<double>(B * H) * static_cast<double>(T) * static_cast<double>(D) *
                      static_cast<double>(D + C) * (backward ? 14.0 : 4.0);
  const double elem = static_cast<double>(n) * sizeof(E);
  const double bytes = elem * (backward ? 11.0 : 4.0);
  const double floor_s = std::max(flop / 790e12, bytes / 4.3e12);
  state.counters["FLOP/s"] = benchmark::Counter(flop, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["median_ms"] = med_s * 1e3;
  state.counters["floor_ms"] = floor_s * 1e3;
  state.counters["floor_frac"] = med_s > 0 ? floor_s / med_s : 0;
  state.counters["ns_per_token"] = med_s * 1e9 / static_cast<double>(B * T);
  RETNET_CUDA_CHECK(cudaEventDestroy(e0));
  RETNET_CUDA_CHECK(cudaEventDestroy(e1));
  RETNET_CUDA_CHECK(cudaStreamDestroy(stream));
}

void shapes(benchmark::internal::Benchmark* b) {
  b->Args({8, 4096, 16, 128})
      ->Args({4, 4096, 64, 128})
      ->Args({2, 16384, 16, 128})
      ->Args({4, 2048, 16, 128})
      ->Args({8, 1024, 8, 64})
      ->Args({4, 8192, 8, 256});
  b->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(0.3);
}
// Cost per token against the sequence length: at batch 4 (the machine is far from full at 1k: 64 (batch, head)
// pairs of 16 chunks), and at 131,072 tokens per call (the batch shrinks as the sequences grow), which separates
// the cost of longer sequences from the cost of a small call.
void scaling(benchmark::internal::Benchmark* b) {
  for (int64_t t : {1024, 4096, 16384, 32768}) b->Args({4, t, 16, 128});
  b->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(0.3);
}
void scaling_equal_tokens(benchmark::internal::Benchmark* b) {
  for (int64_t t : {1024, 4096, 16384, 32768}) b->Args({131072 / t, t, 16, 128});
  b->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(0.3);
}

void bm_bf16(benchmark::State& s, Pass pass) { bm_retention<__nv_bfloat16>(s, pass); }
void bm_f32(benchmark::State& s, Pass pass) { bm_retention<float>(s, pass); }
void bm_tf32(benchmark::State& s, Pass pass) { bm_retention<float>(s, pass, true); }

}  // namespace

BENCHMARK_CAPTURE(bm_bf16, fwd, Pass::forward)->Apply(shapes);
BENCHMARK_CAPTURE(bm_bf16, fwdbwd, Pass::forward_backward)->Apply(shapes);
BENCHMARK_CAPTURE(bm_bf16, fwdbwd_recompute, Pass::forward_backward_recompute)->Apply(shapes);
BENCHMARK_CAPTURE(bm_f32, fwd, Pass::forward)->Apply(shapes);
BENCHMARK_CAPTURE(bm_f32, fwdbwd, Pass::forward_backward)->Apply(shapes);
BENCHMARK_CAPTURE(bm_tf32, fwd, Pass::forward)->Apply(shapes);
BENCHMARK_CAPTURE(bm_tf32, fwdbwd, Pass::forward_backward)->Apply(shapes);
BENCHMARK_CAPTURE(bm_bf16, fwdbwd_scaling, Pass::forward_backward)->Apply(scaling);
BENCHMARK_CAPTURE(bm_bf16, fwdbwd_scaling_tokens, Pass::forward_backward)->Apply(scaling_equal_tokens);

BENCHMARK_MAIN();
