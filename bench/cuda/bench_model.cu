// Training step of the whole model on the GPU (Trainer<T, Cuda>): tokens/s and model FLOP/s (6 per parameter
// and token for the dense layers, plus retention's chunkwise products), in float storage with exact float or TF32
// products, and in bf16 storage (float gradients, master weights and state). Configurations: the default train_lm model
// and a 1.35 B-parameter one (hidden 2048, 24 layers, heads of 128/256, SwiGLU 2816, vocabulary 32000: fla's default
// RetNet size, with the head sizes the GPU retention takes).
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <random>
#include <vector>

#include "retnet/cuda.cuh"

namespace {

using namespace retnet;

ModelConfig config_of(int which) {
  ModelConfig c;
  if (which == 0) {  // train_lm's default model
    c.decoder_embed_dim = 256;
    c.decoder_value_embed_dim = 512;
    c.decoder_retention_heads = 4;
    c.decoder_ffn_embed_dim = 512;
    c.decoder_layers = 4;
    c.vocab_size = 256;
    c.recurrent_chunk_size = 64;
  } else {  // 1: 16 heads of 128/256; 2: fla's default 8 heads of 256/512 (value heads run split)
    c.decoder_embed_dim = 2048;
    c.decoder_value_embed_dim = 4096;
    c.decoder_retention_heads = which == 1 ? 16 : 8;
    c.decoder_ffn_embed_dim = 2816;
    c.decoder_layers = 24;
    c.vocab_size = 32000;
    c.recurrent_chunk_size = 64;
  }
  c.activation_fn = "swish";
  return c;
}

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
  const double H = static_cast<double>(cfg.decoder_retention_heads), dk = static_cast<double>(cfg.key_dim()),
               dv = static_cast<double>(cfg.value_dim()), C = static_cast<double>(cfg.recurrent_chunk_size);
  // retention per token and head, forward: intra-chunk scores and outputs (C dk + C dv), state read and update
  // (2 dk dv) as multiply-adds; backward twice the forward.
  const double retention = 3.0 * 2.0 * tokens * H * (C * (dk + dv) + 2.0 * dk * dv) * cfg.decoder_layers;
  const double flops = 6.0 * params * tokens + retention;
  state.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["params"] = params;
  state.counters["GiB_used"] = static_cast<double>(total_b - free_b) / (1 << 30);
}

void bm_train_step(benchmark::State& state) {
  const ModelConfig cfg = config_of(static_cast<int>(state.range(0)));
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
