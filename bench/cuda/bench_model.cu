// Training step of the whole model on the GPU (Trainer<T, Cuda>): tokens/s and model FLOP/s (6 per parameter
// and token for the dense layers, plus retention's chunkwise products), in float storage with exact float or TF32
// products, and in bf16 storage (float gradients, master weights and state). Models: bench/bench_configs.hpp (0
// train_lm's default, 1 a 1.35 B torchscale-style model, 2 fla's RetNet 1.3B exactly).
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <random>
#include <vector>

#include "../bench_configs.hpp"
#include "retnet/cuda.cuh"

namespace {

using namespace retnet;

const Cuda& context(bool tf32) {
  static Cuda exact, fast;
  static bool made = false;
  if (!made) {
    RETNET_CUDA_CHECK(cudaStreamCreate(&exact.stream));
    RETNET_CUBLAS_CHECK(cublasCreate(&exact.cublas));
    fast = exact;
    fast.allow_tf32 = true;
    made = true;
  }
  return tf32 ? fast : exact;
}

// args: model (0 default, 1 and 2 large), batch, length, precision (0 float, 1 float with tf32 products, 2 bf16)
template <class S>
void train_step(benchmark::State& state, const ModelConfig& cfg, int64_t B, int64_t T, bool tf32) {
  Model<S, Cuda> model(cfg, context(tf32));
  model.init_torchscale(1);
  TrainerConfig tc;
  tc.adamw.lr = 1e-4;
  Trainer<S, Cuda> trainer(model, tc);
  std::mt19937_64 gen(7);
  std::uniform_int_distribution<int64_t> tok(0, cfg.vocab_size - 1);
  std::vector<int64_t> x(static_cast<size_t>(B * T)), y(x.size());
  for (auto& v : x) v = tok(gen);
  for (auto& v : y) v = tok(gen);
  const HostView<const int64_t> xv(x.data(), {B, T}), yv(y.data(), {B, T});
  trainer.step(xv, yv);  // allocates the workspace
  size_t free_b = 0, total_b = 0;
  for (auto _ : state) benchmark::DoNotOptimize(trainer.step(xv, yv).loss);
  RETNET_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  const double tokens = static_cast<double>(B * T), params = static_cast<double>(model.param_count());
  // the input embedding is a lookup, not a product (tied, it is the output projection too)
  const double embedding = cfg.share_decoder_input_output_embed
                               ? 0.0
                               : static_cast<double>(cfg.vocab_size) * static_cast<double>(cfg.decoder_embed_dim);
  const double H = static_cast<double>(cfg.decoder_retention_heads), dk = static_cast<double>(cfg.key_dim()),
               dv = static_cast<double>(cfg.value_dim()), C = static_cast<double>(cfg.recurrent_chunk_size);
  // retention per token and head, forward: intra-chunk scores and outputs (C dk + C dv), state read and update
  // (2 dk dv) as multiply-adds; backward twice the forward.
  const double retention = 3.0 * 2.0 * tokens * H * (C * (dk + dv) + 2.0 * dk * dv) * cfg.decoder_layers;
  const double flops = 6.0 * (params - embedding) * tokens + retention;
  state.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["params"] = params;
  state.counters["GiB_used"] = static_cast<double>(total_b - free_b) / (1 << 30);
}

void bm_train_step(benchmark::State& state) {
  const ModelConfig cfg = retnet_bench::model_config(static_cast<int>(state.range(0)));
  const int64_t B = state.range(1), T = state.range(2), precision = state.range(3);
  if (precision == 2)
    train_step<__nv_bfloat16>(state, cfg, B, T, false);
  else
    train_step<float>(state, cfg, B, T, precision == 1);
}

}  // namespace

BENCHMARK(bm_train_step)
    ->ArgNames({"model", "B", "T", "precision"})
    ->Args({0, 16, 256, 0})
    ->Args({0, 16, 256, 1})
    ->Args({0, 16, 256, 2})
    ->Args({1, 1, 8192, 1})
    ->Args({1, 1, 8192, 2})
    ->Args({1, 2, 8192, 2})
    ->Args({1, 8, 2048, 2})
    ->Args({2, 2, 8192, 2})
    ->Args({2, 8, 2048, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(3.0);

BENCHMARK_MAIN();
