// CPU retention benchmarks (float, torchscale normalisation, 8 heads, key = value head size D):
//   sgemm      Eigen sgemm 1024^3 in this binary: the yardstick for the ratios
//   chunkwise  forward and forward+backward, FLOP model 4 T D (D + C) / 14 T D (D + C) per head
//              (PERFORMANCE.md; it counts the full C x C intra-chunk block, masked half included)
//   parallel   forward and forward+backward, own count T^2 (dk + dv) / 3.5 T^2 (dk + dv) per head
//              (the lower triangle of the score matrix once per product: 2 products forward, 7 in all)
//   recurrent  decoding steps per second
// Arguments: chunkwise/parallel {batch, length, D, chunk}; recurrent {batch, D}.
// Ratios to check in one run: chunkwise fwd+bwd GFLOP/s >= 0.4x sgemm; chunkwise ns/token flat (1.3x)
// from T = 1k to 32k; parallel >= 5x slower than chunkwise at T = 4096.
#include <benchmark/benchmark.h>

#include <random>

#include "retnet/retnet.hpp"

namespace {

using namespace retnet;

constexpr int64_t kHeads = 8;

void fill(Tensor<float>& t, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  for (auto& x : t.storage()) x = normal(rng);
}

struct Setup {
  RetentionConfig cfg;
  Tensor<float> q, k, v, o, d_o, dq, dk, dv;
  Setup(int64_t B, int64_t T, int64_t D, int64_t C)
      : cfg(RetentionOptions{.heads = kHeads, .key_dim = D, .value_dim = D, .chunk_size = C}),
        q({B, T, kHeads, D}),
        k({B, T, kHeads, D}),
        v({B, T, kHeads, D}),
        o({B, T, kHeads, D}),
        d_o({B, T, kHeads, D}),
        dq({B, T, kHeads, D}),
        dk({B, T, kHeads, D}),
        dv({B, T, kHeads, D}) {
    fill(q, 1, 1.0f);
    fill(k, 2, 1.0f / std::sqrt(static_cast<float>(D)));
    fill(v, 3, 1.0f);
    fill(d_o, 4, 1.0f);
  }
  RetentionInputs<float> in() const { return {q.cview(), k.cview(), v.cview(), {}, {}}; }
  void forward(Form f) { retention_forward(cpu, f, cfg, in(), RetentionOutputs<float>{o.view(), {}, {}}); }
  void backward(Form f) {
    retention_backward(cpu, f, cfg, in(), RetentionOutputGrads<float>{d_o.cview(), {}},
                       RetentionInputGrads<float>{dq.view(), dk.view(), dv.view(), {}});
  }
};

void set_counters(benchmark::State& state, double flops_per_iter, int64_t tokens_per_iter) {
  using benchmark::Counter;
  state.counters["FLOP/s"] = Counter(flops_per_iter, Counter::kIsIterationInvariantRate, Counter::kIs1000);
  if (tokens_per_iter > 0)
    state.counters["tokens/s"] =
        Counter(static_cast<double>(tokens_per_iter), Counter::kIsIterationInvariantRate, Counter::kIs1000);
  if (tokens_per_iter > 0)
    state.counters["us/token"] =
        Counter(static_cast<double>(tokens_per_iter) * 1e-6, Counter::kIsIterationInvariantRate | Counter::kInvert);
}

void BM_sgemm1024(benchmark::State& state) {
  const Eigen::Index n = 1024;
  Eigen::MatrixXf a = Eigen::MatrixXf::Random(n, n), b = Eigen::MatrixXf::Random(n, n), c(n, n);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2.0 * static_cast<double>(n * n * n), 0);
}

template <Form F, bool Backward>
void BM_retention(benchmark::State& state) {
  const int64_t B = state.range(0), T = state.range(1), D = state.range(2), C = state.range(3);
  Setup s(B, T, D, C);
  for (auto _ : state) {
    s.forward(F);
    if (Backward) s.backward(F);
    benchmark::ClobberMemory();
  }
  const double pairs = static_cast<double>(B * kHeads), t = static_cast<double>(T), d = static_cast<double>(D);
  double flops = 0;
  if (F == Form::chunkwise)
    flops = (Backward ? 14.0 : 4.0) * t * d * (d + static_cast<double>(C)) * pairs;
  else
    flops = (Backward ? 3.5 : 1.0) * t * t * 2.0 * d * pairs;
  set_counters(state, flops, B * T);
}

void BM_recurrent_step(benchmark::State& state) {
  const int64_t B = state.range(0), D = state.range(1);
  const RetentionConfig cfg(RetentionOptions{.heads = kHeads, .key_dim = D, .value_dim = D});
  Tensor<float> q({B, kHeads, D}), k({B, kHeads, D}), v({B, kHeads, D}), o({B, kHeads, D});
  Tensor<float> kv({B, kHeads, D, D}), scale({B, kHeads});
  fill(q, 1, 1.0f), fill(k, 2, 1.0f / std::sqrt(static_cast<float>(D))), fill(v, 3, 1.0f);
  for (auto _ : state) {
    retention_recurrent_step(cpu, cfg, q.cview(), k.cview(), v.cview(), kv.view(), scale.view(), o.view());
    benchmark::ClobberMemory();
  }
  state.counters["steps/s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(B), benchmark::Counter::kIsIterationInvariantRate);
}

// {batch, length, D, chunk}
void chunk_args(benchmark::internal::Benchmark* b) {
  for (int64_t D : {64, 128}) {
    for (int64_t T : {512, 1024, 4096, 32768}) b->Args({1, T, D, 64});
    b->Args({4, 4096, D, 64});
    for (int64_t C : {32, 128}) b->Args({1, 4096, D, C});
  }
}
void parallel_args(benchmark::internal::Benchmark* b) {
  for (int64_t D : {64, 128})
    for (int64_t T : {512, 1024, 4096}) b->Args({1, T, D, 64});
}

}  // namespace

// Registration order is run order: an sgemm sits next to each block so that every ratio is taken between
// neighbours (the machine is shared; load changes within a minute).
BENCHMARK(BM_sgemm1024)->Name("sgemm1024/before_chunkwise_fwd")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_retention, Form::chunkwise, false)
    ->Name("chunkwise_fwd")
    ->Apply(chunk_args)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_sgemm1024)->Name("sgemm1024/before_chunkwise_fwdbwd")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_retention, Form::chunkwise, true)
    ->Name("chunkwise_fwdbwd")
    ->Apply(chunk_args)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_sgemm1024)->Name("sgemm1024/after_chunkwise_fwdbwd")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_retention, Form::parallel, false)
    ->Name("parallel_fwd")
    ->Apply(parallel_args)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_retention, Form::parallel, true)
    ->Name("parallel_fwdbwd")
    ->Apply(parallel_args)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_recurrent_step)->Args({1, 64})->Args({1, 128})->Args({4, 64})->Args({4, 128})->UseRealTime();
BENCHMARK(BM_sgemm1024)->Name("sgemm1024/last")->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
