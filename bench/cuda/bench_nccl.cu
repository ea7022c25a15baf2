// Data-parallel training throughput on N GPUs (mpirun -np N bench_cuda_nccl [model B T precision zero steps]), one
// rank per GPU: each rank trains B x T tokens per step (weak scaling), so the global batch grows with N. Prints, on
// rank 0, tokens/s over all ranks, the step time, and the gradient's all-reduce timed alone (what the overlap with
// the backward pass has to hide). Models: bench/bench_configs.hpp (0 train_lm's default, 1 a 1.35 B torchscale-style
// model, 2 fla's RetNet 1.3B). precision: 0 float, 1 float with
// TF32 products, 2 bf16. bench/cuda/nccl_scaling.sh runs 1, 2, 4 and 8 GPUs and prints the speed-ups.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../bench_configs.hpp"
#include "retnet/cuda.cuh"
#include "retnet/dist/mpi.hpp"
#include "retnet/dist/nccl.cuh"

namespace {

using namespace retnet;

template <class S>
void run(dist::NcclCommunicator& comm, const Cuda& be, const ModelConfig& cfg, int64_t B, int64_t T, int zero,
         int steps) {
  Model<S, Cuda> model(cfg, be);
  model.init_torchscale(1);
  TrainerConfig tc;
  tc.adamw.lr = 1e-4;
  tc.dist.comm = &comm;
  tc.dist.zero_stage = zero;
  Trainer<S, Cuda> trainer(model, tc);
  std::mt19937_64 gen(7 + static_cast<uint64_t>(comm.rank()));
  std::uniform_int_distribution<int64_t> tok(0, cfg.vocab_size - 1);
  std::vector<int64_t> x(static_cast<size_t>(B * T)), y(x.size());
  for (auto& v : x) v = tok(gen);
  for (auto& v : y) v = tok(gen);
  const HostView<const int64_t> xv(x.data(), {B, T}), yv(y.data(), {B, T});
  for (int w = 0; w < 2; ++w) trainer.step(xv, yv);  // workspaces, NCCL channels
  comm.barrier();
  const auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < steps; ++s) trainer.step(xv, yv);  // each step ends with a copy of its loss to the host
  comm.barrier();
  const double step_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;

  // the whole gradient all-reduced alone, for comparison
  Buffer<float, Cuda> g(be, model.param_count());
  comm.all_reduce(g.data(), g.size());
  be.sync();
  const auto t1 = std::chrono::steady_clock::now();
  for (int s = 0; s < 5; ++s) comm.all_reduce(g.data(), g.size());
  be.sync();
  const double reduce_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count() / 5;
  if (comm.rank() == 0)
    std::printf(
        "ranks %d  params %lld  local batch %lld x %lld  zero %d  step %.1f ms  tokens/s %.0f  "
        "gradient all-reduce alone %.1f ms\n",
        comm.size(), static_cast<long long>(model.param_count()), static_cast<long long>(B), static_cast<long long>(T),
        zero, 1e3 * step_s, static_cast<double>(B * T) * comm.size() / step_s, 1e3 * reduce_s);
}

}  // namespace

int main(int argc, char** argv) {
  dist::MpiContext mpi(&argc, &argv);
  dist::MpiCommunicator world;
  auto arg = [&](int i, long long def) { return argc > i ? std::atoll(argv[i]) : def; };
  const int which = static_cast<int>(arg(1, 1)), precision = static_cast<int>(arg(4, 2)),
            zero = static_cast<int>(arg(5, 0)), steps = static_cast<int>(arg(6, 10));
  const int64_t B = arg(2, 1), T = arg(3, 8192);
  return dist::run_guarded(world, [&] {
    require(which >= 0 && which <= 2, "bench_cuda_nccl: model ", which, " is not 0, 1 or 2");
    require(precision >= 0 && precision <= 2, "bench_cuda_nccl: precision ", precision, " is not 0, 1 or 2");
    require(B > 0 && T > 0 && steps > 0, "bench_cuda_nccl: B ", B, ", T ", T, " and steps ", steps,
            " must be positive");
    dist::select_device(world);
    Cuda be;
    be.allow_tf32 = precision == 1;
    RETNET_CUDA_CHECK(cudaStreamCreateWithFlags(&be.stream, cudaStreamNonBlocking));
    RETNET_CUBLAS_CHECK(cublasCreate(&be.cublas));
    RETNET_CUBLAS_CHECK(cublasSetStream(be.cublas, be.stream));
    {
      dist::NcclCommunicator comm(world, be.stream);
      if (precision == 2)
        run<__nv_bfloat16>(comm, be, retnet_bench::model_config(which), B, T, zero, steps);
      else
        run<float>(comm, be, retnet_bench::model_config(which), B, T, zero, steps);
    }
    (void)cublasDestroy(be.cublas);
    (void)cudaStreamDestroy(be.stream);
    return 0;
  });
}
