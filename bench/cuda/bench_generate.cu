// Generation on the GPU (Model<float, Cuda>): decoding tokens/s at batch 1, 64 and 256 after a 128-token prompt
// (the step replayed as a CUDA graph, greedy sampling on the GPU), prefill tokens/s of 2,048 and 32,768-token
// prompts, and the step time at 128 and 32,768 tokens of context. A decoding step reads every weight once, so its
// bound is the weight bytes over the memory bandwidth: each decode case reports weight_bytes/s, and
// bm_copy_bandwidth measures a device-to-device cudaMemcpy in the same binary (bytes read plus bytes written per
// second) to compare it with.
//
// Configuration: bench_model's 1.35 B-parameter model (hidden 2048, 24 layers, 16 heads of dk 128 and dv 256,
// SwiGLU 2816, vocabulary 32000). Flags before Google Benchmark's own: --heads=H --value-dim=VD (value_embed_dim,
// e.g. --heads=8 --value-dim=2048 for dk = dv = 256) --layers=L --hidden=D --ffn=F --vocab=V --tf32=0|1.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "retnet/cuda.cuh"
#include "retnet/cuda/decode_graph.cuh"
#include "retnet/cuda/sampling.cuh"

namespace {

using namespace retnet;

ModelConfig g_cfg = [] {
  ModelConfig c;
  c.decoder_embed_dim = 2048;
  c.decoder_value_embed_dim = 4096;
  c.decoder_retention_heads = 16;
  c.decoder_ffn_embed_dim = 2816;
  c.decoder_layers = 24;
  c.vocab_size = 32000;
  c.recurrent_chunk_size = 64;
  c.activation_fn = "swish";
  return c;
}();
bool g_tf32 = true;

const Cuda& context() {
  static const Cuda ctx = [] {
    Cuda c;
    RETNET_CUDA_CHECK(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking));
    RETNET_CUBLAS_CHECK(cublasCreate(&c.cublas));
    c.allow_tf32 = g_tf32;
    return c;
  }();
  return ctx;
}

// One model for every case (5.4 GB in float).
Model<float, Cuda>& model() {
  static std::unique_ptr<Model<float, Cuda>> m = [] {
    auto p = std::make_unique<Model<float, Cuda>>(g_cfg, context());
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
void bm_decode(benchmark::State& state) {
  const int64_t B = state.range(0), context_len = state.range(1);
  auto& m = model();
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
  DecodeGraph<float> graph(m, st, &sampler);
  for (int i = 0; i < 3; ++i) graph.replay();  // direct, capture, replay
  const int kSteps = 16;
  for (auto _ : state) {
    const double ms = time_ms([&] {
      for (int i = 0; i < kSteps; ++i) graph.replay();
    });
    state.SetIterationTime(ms / 1e3);
  }
  const double weights = static_cast<double>(m.param_count()) * sizeof(float);
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(B * kSteps), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["weight_bytes/s"] =
      benchmark::Counter(weights * kSteps, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["ms/step"] =
      benchmark::Counter(kSteps / 1e3, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.counters["params"] = static_cast<double>(m.param_count());
}

// args: prompt length. Batch 1, chunkwise form, from an empty state; tokens uploaded from the host each time.
void bm_prefill(benchmark::State& state) {
  const int64_t T = state.range(0);
  auto& m = model();
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
  for (auto _ : state) {
    const double ms = time_ms([&] {
      RETNET_CUDA_CHECK(
          cudaMemcpyAsync(b.data(), a.data(), static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, context().stream));
    });
    state.SetIterationTime(ms / 1e3);
  }
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
    int64_t tf32 = g_tf32 ? 1 : 0;
    if (value("heads", g_cfg.decoder_retention_heads) || value("value-dim", g_cfg.decoder_value_embed_dim) ||
        value("layers", g_cfg.decoder_layers) || value("hidden", g_cfg.decoder_embed_dim) ||
        value("ffn", g_cfg.decoder_ffn_embed_dim) || value("vocab", g_cfg.vocab_size))
      continue;
    if (value("tf32", tf32)) {
      g_tf32 = tf32 != 0;
      continue;
    }
    argv[out++] = argv[i];
  }
  argc = out;
  g_cfg.validate();
}

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
  parse_flags(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
