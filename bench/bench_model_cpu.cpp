// CPU model benchmarks (float32; decoding also with bf16 weights): one training step (forward, cross-entropy, backward,
// AdamW) of the PERFORMANCE.md model (4 layers, d_model 512, value dim 1024, FFN 1024, vocab 256) and recurrent
// decoding, each set against a ceiling measured in the same binary:
//   * BM_sgemm: Eigen sgemm 2048³ GFLOP/s (training goal: model FLOP/s >= half of it);
//   * BM_stream_read: main-memory read bandwidth over 1 GiB (decoding ceiling = bandwidth / weight bytes);
//   * torchscale's measured tokens/s on the same shapes (PERFORMANCE.md) as the ratio "vs_torchscale".
// Run: OMP_NUM_THREADS=2 bench_model_cpu  (results: bench/results/cpu_model.md)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "retnet/retnet.hpp"

using namespace retnet;

namespace {

// Ceilings measured earlier in the same run (benchmarks run in registration order).
double g_sgemm_gflops = 0, g_stream_gbs = 0;

ModelConfig bench_config(int64_t heads, int64_t chunk) {
  ModelConfig c;
  c.decoder_embed_dim = 512;
  c.decoder_value_embed_dim = 1024;
  c.decoder_ffn_embed_dim = 1024;
  c.decoder_layers = 4;
  c.decoder_retention_heads = heads;
  c.vocab_size = 256;
  c.recurrent_chunk_size = chunk;
  return c;
}

int64_t param_count(const Model<float>& m) {
  int64_t n = 0;
  for (const auto& p : m.param_table().entries()) n += p.numel();
  return n;
}

// FLOP of one trained token: 6 x matmul parameters (embedding lookups excluded) + retention.
double train_flop_per_token(const ModelConfig& c, int64_t T, Form form) {
  const double d = double(c.decoder_embed_dim), Vd = double(c.decoder_value_embed_dim),
               F = double(c.decoder_ffn_embed_dim), V = double(c.vocab_size), L = double(c.decoder_layers);
  const double matmul = L * (2 * d * d + 3 * d * Vd + 3 * d * F) + d * V;
  const double H = double(c.decoder_retention_heads), dk = d / H, dv = Vd / H;
  // per head and token: chunkwise fwd ~ 2·C·(dk+dv)/2 (intra, causal half) + 4·dk·dv (state), bwd ~ 2x fwd
  const double C = form == Form::parallel ? double(T) : double(std::min<int64_t>(c.recurrent_chunk_size, T));
  const double ret = H * 3 * (C * (dk + dv) + 4 * dk * dv);
  return 6 * matmul + ret;
}

void BM_sgemm(benchmark::State& state) {
  const int64_t n = state.range(0);
  cpu_detail::RowMat<float> a = cpu_detail::RowMat<float>::Random(n, n), b = cpu_detail::RowMat<float>::Random(n, n),
                            c(n, n);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(n) * n * n * 1e-9 * double(state.iterations()), benchmark::Counter::kIsRate);
  g_sgemm_gflops = std::max(g_sgemm_gflops, 2.0 * double(n) * n * n * 1e-9 * double(state.iterations()) / seconds);
}
BENCHMARK(BM_sgemm)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);

// One pass over buf (the read-bandwidth probe).
double read_all(const std::vector<float>& buf) {
  const int64_t n = int64_t(buf.size());
  double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
  for (int64_t i = 0; i < n; i += 16) {
    float s = 0;
    for (int j = 0; j < 16; ++j) s += buf[size_t(i + j)];
    total += s;
  }
  return total;
}

void BM_stream_read(benchmark::State& state) {
  const size_t n = size_t(1) << 28;  // 1 GiB of float
  std::vector<float> buf(n, 1.0f);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) benchmark::DoNotOptimize(read_all(buf));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  state.counters["GB/s"] =
      benchmark::Counter(double(n) * 4 * 1e-9 * double(state.iterations()), benchmark::Counter::kIsRate);
  g_stream_gbs = std::max(g_stream_gbs, double(n) * 4 * 1e-9 * double(state.iterations()) / seconds);
}
BENCHMARK(BM_stream_read)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);

// args: batch, length, heads, chunk, form (0 parallel, 1 chunkwise), torchscale tokens/s x 10
void BM_train_step(benchmark::State& state) {
  const int64_t B = state.range(0), T = state.range(1), H = state.range(2), C = state.range(3);
  const Form form = state.range(4) == 0 ? Form::parallel : Form::chunkwise;
  const double torchscale = double(state.range(5));
  const ModelConfig cfg = bench_config(H, C);
  Model<float> model(cfg);
  model.init_torchscale(1);
  TrainerConfig tc;
  tc.form = form;
  tc.schedule = LrSchedule{0, 1000, LrDecay::constant, 1.0};
  Trainer<float> tr(model, tc);
  std::mt19937_64 g(3);
  std::vector<int64_t> x(size_t(B * T)), y(x.size());
  for (auto& v : x) v = int64_t(g() % 256);
  for (auto& v : y) v = int64_t(g() % 256);
  HostView<const int64_t> xv(x.data(), {B, T}), yv(y.data(), {B, T});
  tr.step(xv, yv);  // warm-up: workspaces allocated
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) benchmark::DoNotOptimize(tr.step(xv, yv).loss);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double tokens = double(B * T) * double(state.iterations());
  const double gflops = tokens * train_flop_per_token(cfg, T, form) * 1e-9 / seconds;
  state.counters["vs_torchscale"] = tokens / seconds / torchscale;
  if (g_sgemm_gflops > 0) state.counters["of_sgemm"] = gflops / g_sgemm_gflops;
  state.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(tokens * train_flop_per_token(cfg, T, form) * 1e-9, benchmark::Counter::kIsRate);
  state.counters["torchscale_tok/s"] = torchscale;
  state.counters["params"] = double(param_count(model));
}
BENCHMARK(BM_train_step)
    ->Args({1, 2048, 2, 256, 0, 719})
    ->Args({1, 2048, 2, 256, 1, 854})
    ->Args({4, 1024, 4, 128, 0, 1112})
    ->Args({4, 1024, 4, 128, 1, 1195})
    ->ArgNames({"B", "T", "H", "C", "chunkwise", "ts"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(3.0);

// args: batch, prompt length before timing; decoding steps timed one token per row each. bf16: the model's
// bf16 inference weights (2 bytes per streamed weight, so the ceiling doubles).
void decode_bench(benchmark::State& state, bool bf16) {
  const int64_t B = state.range(0), P = state.range(1);
  Model<float> model(bench_config(2, 256));
  model.init_torchscale(1);
  if (bf16) model.set_inference_weights(WeightPrecision::bf16);
  if (g_stream_gbs == 0) {  // BM_stream_read filtered out (--benchmark_filter=decode): probe the bandwidth here
    std::vector<float> buf(size_t(1) << 28, 1.0f);
    benchmark::DoNotOptimize(read_all(buf));
    for (int rep = 0; rep < 5; ++rep) {
      const auto r0 = std::chrono::steady_clock::now();
      benchmark::DoNotOptimize(read_all(buf));
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - r0).count();
      g_stream_gbs = std::max(g_stream_gbs, double(buf.size()) * 4 * 1e-9 / s);
    }
  }
  auto st = model.make_state(B);
  std::vector<int64_t> prompt(size_t(B * P), 65), tok(size_t(B), 66);
  if (P > 0) model.prefill(HostView<const int64_t>(prompt.data(), {B, P}), st);
  size_t state_bytes = 0;
  for (size_t l = 0; l < st.kv.size(); ++l) state_bytes += size_t(st.kv[l].numel() + st.scale[l].numel()) * 4;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) benchmark::DoNotOptimize(model.step(HostView<const int64_t>(tok.data(), {B}), st).data());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // embedding rows are gathered, not streamed
  const double weight_bytes = double(param_count(model) - 256 * 512) * (bf16 ? 2 : 4);
  if (g_stream_gbs > 0) {
    const double ceiling = g_stream_gbs * 1e9 / weight_bytes;  // tokens/s of one row if only weights were read
    state.counters["ceiling_tok/s"] = ceiling;
    state.counters["of_ceiling"] = double(B) * double(state.iterations()) / seconds / ceiling;
  }
  state.counters["tokens/s"] = benchmark::Counter(double(B) * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["weight_MB"] = weight_bytes * 1e-6;
  state.counters["state_MB"] = double(state_bytes) * 1e-6;
}
void BM_decode(benchmark::State& state) { decode_bench(state, false); }
void BM_decode_bf16(benchmark::State& state) { decode_bench(state, true); }
BENCHMARK(BM_decode)
    ->Args({1, 0})
    ->Args({1, 2048})
    ->Args({16, 0})
    ->Args({16, 512})
    ->ArgNames({"B", "prompt"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(2.0);
BENCHMARK(BM_decode_bf16)
    ->Args({1, 0})
    ->Args({16, 0})
    ->ArgNames({"B", "prompt"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
