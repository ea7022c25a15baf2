// Generation on the GPU (Model<T, Cuda>, bf16 weights with float state by default): decoding tokens/s at batch 1, 64
// and 256 after a 128-token prompt (the step replayed as a CUDA graph, greedy sampling on the GPU), prefill tokens/s
// of 2,048 and 32,768-token prompts, and the step time at 128 and 32,768 tokens of context. A decoding step reads
// every weight once (the input embedding only in its B rows), so its bound is those bytes over the memory
// bandwidth: each decode case reports weight_bytes/s and the share of the ceiling, from bm_copy_bandwidth, a
// device-to-device cudaMemcpy measured first in the same binary (bytes read plus bytes written per second).
//
// Flags before Google Benchmark's own: --model=N (bench/bench_configs.hpp; default 2, fla's RetNet 1.3B),
// --precision=bf16|float (default bf16), --tf32=0|1 (float's products; default 1).
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../bench_configs.hpp"
#include "retnet/cuda.cuh"
#include "retnet/cuda/decode_graph.cuh"
#include "retnet/cuda/sampling.cuh"

namespace {

using namespace retnet;
using bf16 = __nv_bfloat16;

int g_model = 2;
bool g_bf16 = true, g_tf32 = true;
ModelConfig g_cfg;
double g_copy_bytes_per_s = 0;  // measured by bm_copy_bandwidth, registered first

const Cuda& context() {
  static const CudaContext ctx(g_tf32);
  return ctx.backend();
}

// One model for every case.
template <class T>
Model<T, Cuda>& model() {
  static std::unique_ptr<Model<T, Cuda>> m = [] {
    auto p = std::make_unique<Model<T, Cuda>>(g_cfg, context());
    p->init_torchscale(1);
    return p;
  }();
  return *m;
}

std::vector<int64_t> random_tokens(int64_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int64_t> d(0, g_cfg.vocab_size - 1);
  std::vector<int64_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = d(g);
  return t;
}

// Elapsed milliseconds of what f enqueues on the model's stream.
template <class F>
double time_ms(F&& f) {
  cudaEvent_t a, b;
  RETNET_CUDA_CHECK(cudaEventCreate(&a));
  RETNET_CUDA_CHECK(cudaEventCreate(&b));
  RETNET_CUDA_CHECK(cudaEventRecord(a, context().stream));
  f();
  RETNET_CUDA_CHECK(cudaEventRecord(b, context().stream));
  RETNET_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  RETNET_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  (void)cudaEventDestroy(a);
  (void)cudaEventDestroy(b);
  return ms;
}

// args: batch, context (prompt tokens before decoding). Each iteration is 16 graph-replayed steps with greedy
// sampling on the GPU, no host round trip between them.
template <class T>
void decode(benchmark::State& state) {
  const int64_t B = state.range(0), context_len = state.range(1);
  auto& m = model<T>();
  auto st = m.make_state(B);
  // The prompt in pieces of at most 65,536 tokens over the batch (the prefill workspace grows with batch x length).
  const int64_t piece = std::max<int64_t>(1, std::min<int64_t>(context_len, 65536 / B));
  for (int64_t done = 0; done < context_len; done += piece) {
    const int64_t n = std::min(piece, context_len - done);
    const auto toks = random_tokens(B * n, static_cast<uint64_t>(done));
    m.prefill_rows(HostView<const int64_t>(toks.data(), {B, n}), st, 0);
  }
  SamplingOptions so;
  so.greedy = true;
  DeviceSampler sampler(context(), B, g_cfg.vocab_size, so);
  sampler.sample(st.logits(), st.tokens(), 0, B);
  DecodeGraph<T> graph(m, st, &sampler);
  for (int i = 0; i < 3; ++i) graph.replay();  // direct, capture, replay
  const int kSteps = 16;
  for (auto _ : state) {
    const double ms = time_ms([&] {
      for (int i = 0; i < kSteps; ++i) graph.replay();
    });
    state.SetIterationTime(ms / 1e3);
  }
  // bytes a step reads: every parameter but the untied input embedding, of which only B rows
  const double d = static_cast<double>(g_cfg.decoder_embed_dim), V = static_cast<double>(g_cfg.vocab_size);
  const double embedding = g_cfg.share_decoder_input_output_embed ? 0.0 : (V - static_cast<double>(B)) * d;
  const double weights = (static_cast<double>(m.param_count()) - embedding) * sizeof(T);
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(B * kSteps), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["weight_bytes/s"] =
      benchmark::Counter(weights * kSteps, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["ms/step"] =
      benchmark::Counter(kSteps / 1e3, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.counters["params"] = static_cast<double>(m.param_count());
  if (g_copy_bytes_per_s > 0)  // the share of the bandwidth ceiling reached
    state.counters["of_ceiling"] =
        benchmark::Counter(weights * kSteps / g_copy_bytes_per_s, benchmark::Counter::kIsIterationInvariantRate);
}

// args: prompt length. Batch 1, chunkwise form, from an empty state; tokens uploaded from the host each time.
template <class E>
void prefill(benchmark::State& state) {
  const int64_t T = state.range(0);
  auto& m = model<E>();
  auto st = m.make_state(1);
  const auto toks = random_tokens(T, 3);
  const HostView<const int64_t> v(toks.data(), {1, T});
  m.prefill_rows(v, st, 0);  // warm-up
  for (auto _ : state) {
    m.reset_rows(st, 0, 1);
    const double ms = time_ms([&] { m.prefill_rows(v, st, 0); });
    state.SetIterationTime(ms / 1e3);
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(T), benchmark::Counter::kIsIterationInvariantRate);
}

// Device-to-device cudaMemcpy of 2 GiB: bytes read plus bytes written per second.
void bm_copy_bandwidth(benchmark::State& state) {
  const int64_t bytes = int64_t{2} << 30;
  Buffer<unsigned char, Cuda> a(context(), bytes), b(context(), bytes);
  double total_ms = 0;
  for (auto _ : state) {
    const double ms = time_ms([&] {
      RETNET_CUDA_CHECK(
          cudaMemcpyAsync(b.data(), a.data(), static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, context().stream));
    });
    total_ms += ms;
    state.SetIterationTime(ms / 1e3);
  }
  g_copy_bytes_per_s = 2.0 * static_cast<double>(bytes) * static_cast<double>(state.iterations()) / (total_ms / 1e3);
  state.counters["bytes/s"] =
      benchmark::Counter(2.0 * static_cast<double>(bytes), benchmark::Counter::kIsIterationInvariantRate);
}

// Strips this file's flags from argv; the rest goes to Google Benchmark.
void parse_flags(int& argc, char** argv) {
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name, int64_t& dst) {
      const std::string p = std::string("--") + name + "=";
      if (a.rfind(p, 0) != 0) return false;
      dst = std::stoll(a.substr(p.size()));
      return true;
    };
    int64_t tf32 = g_tf32 ? 1 : 0, which = g_model;
    if (value("tf32", tf32)) {
      g_tf32 = tf32 != 0;
      continue;
    }
    if (value("model", which)) {
      require(which >= 0 && which <= 2, "bench_cuda_generate: --model=", which, " is not 0, 1 or 2");
      g_model = static_cast<int>(which);
      continue;
    }
    if (a.rfind("--precision=", 0) == 0) {
      const std::string v = a.substr(12);
      require(v == "bf16" || v == "float", "bench_cuda_generate: --precision=", v, " is not bf16 or float");
      g_bf16 = v == "bf16";
      continue;
    }
    argv[out++] = argv[i];
  }
  argc = out;
  g_cfg = retnet_bench::model_config(g_model);
}

void bm_decode(benchmark::State& state) { g_bf16 ? decode<bf16>(state) : decode<float>(state); }
void bm_prefill(benchmark::State& state) { g_bf16 ? prefill<bf16>(state) : prefill<float>(state); }

}  // namespace

BENCHMARK(bm_copy_bandwidth)->Unit(benchmark::kMillisecond)->UseManualTime()->MinTime(1.0);
BENCHMARK(bm_decode)
    ->ArgNames({"B", "context"})
    ->Args({1, 128})
    ->Args({64, 128})
    ->Args({256, 128})
    ->Args({1, 32768})
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime()
    ->MinTime(2.0);
BENCHMARK(bm_prefill)
    ->ArgNames({"T"})
    ->Arg(2048)
    ->Arg(32768)
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime()
    ->MinTime(2.0);

int main(int argc, char** argv) {
  try {
    parse_flags(argc, argv);
  } catch (const retnet::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
