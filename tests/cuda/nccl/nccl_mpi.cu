// Multi-GPU data parallelism under mpirun, one rank per GPU (mpirun -np N nccl_mpi, N >= 1): the NCCL collectives
// with N ranks; N ranks train like one GPU with the same global batch (float: losses within 1e-5 relative over 50
// steps; bf16: within 2e-2); two runs give the same bits and every rank holds the same parameters; checkpoints
// written by N ranks resume on one GPU and one GPU's resume on N ranks, with ZeRO-1 and without.
// With fewer GPUs on a host than ranks on it, every rank prints "skipped" and the program exits 0.
#include <cuda_bf16.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "nccl/train_case.hpp"
#include "retnet/dist/checkpoint.hpp"
#include "retnet/dist/mpi.hpp"
#include "retnet/dist/nccl.cuh"

namespace {

using retnet::Cuda;
using retnet::HostView;
namespace dist = retnet::dist;

int failures = 0;

void check(bool ok, const std::string& what, int rank) {
  if (ok) return;
  ++failures;
  std::fprintf(stderr, "FAILED on rank %d: %s\n", rank, what.c_str());
}

constexpr int64_t kRows = 6, kLength = 48;

// A trainer over `comm` (null: this GPU alone, the plain device step); its rows of every global batch.
template <class T>
struct Runner {
  retnet::Model<T, Cuda> model;
  retnet::Trainer<T, Cuda> trainer;
  dist::RowRange rows;
  Runner(const Cuda& be, dist::Communicator* comm, int zero)
      : model(retnet_test::nccl_model_config(), be),
        trainer((model.init_torchscale(7), model), config(comm, zero)),
        rows{0, kRows} {
    if (comm) rows = dist::shard_rows(kRows, *comm);
  }
  static retnet::TrainerConfig config(dist::Communicator* comm, int zero) {
    retnet::TrainerConfig tc;
    tc.adamw.lr = 3e-3;
    tc.schedule = retnet::LrSchedule{5, 60, retnet::LrDecay::cosine, 0.1};
    tc.dist.comm = comm;
    tc.dist.zero_stage = zero;
    tc.dist.bucket_bytes = 20 * 1024;  // several buckets, the front one padded
    return tc;
  }
  double step(int64_t s) {
    std::vector<int64_t> x, y;
    retnet_test::nccl_batch(s, kRows, kLength, rows.begin, rows.count, x, y);
    return trainer
        .step(HostView<const int64_t>(x.data(), {rows.count, kLength}),
              HostView<const int64_t>(y.data(), {rows.count, kLength}))
        .loss;
  }
  std::vector<float> params() const {
    const std::vector<T> p = model.params_to_host();
    return std::vector<float>(p.begin(), p.end());
  }
};

void test_collectives(dist::NcclCommunicator& comm, const Cuda& be) {
  const int P = comm.size(), r = comm.rank();
  retnet::Buffer<float, Cuda> a(be, 3 * P), b(be, 3 * P);
  std::vector<float> mine(static_cast<size_t>(3 * P));
  for (int i = 0; i < 3 * P; ++i) mine[static_cast<size_t>(i)] = static_cast<float>((r + 1) * (i + 1));
  a.copy_from_host(mine.data(), 3 * P);
  comm.all_reduce(a.data(), 3 * P);
  const std::vector<float> sum = a.to_host();
  bool ok = true;
  for (int i = 0; i < 3 * P; ++i)
    ok = ok && sum[static_cast<size_t>(i)] == static_cast<float>(P * (P + 1) / 2 * (i + 1));
  check(ok, "all_reduce", r);
  a.copy_from_host(mine.data(), 3 * P);
  comm.reduce_scatter(a.data(), b.data(), 3);
  const std::vector<float> part = b.to_host();
  ok = true;
  for (int i = 0; i < 3; ++i)
    ok = ok && part[static_cast<size_t>(i)] == static_cast<float>(P * (P + 1) / 2 * (3 * r + i + 1));
  check(ok, "reduce_scatter", r);
  retnet::Buffer<__nv_bfloat16, Cuda> h(be, 2 * P);
  const std::vector<__nv_bfloat16> hm{__float2bfloat16(static_cast<float>(r)),
                                      __float2bfloat16(-1.0f * static_cast<float>(r))};
  RETNET_CUDA_CHECK(cudaMemcpy(h.data() + 2 * r, hm.data(), 2 * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
  comm.all_gather_async(static_cast<const void*>(h.data() + 2 * r), static_cast<void*>(h.data()), 2, dist::DType::bf16)
      ->wait();
  const std::vector<__nv_bfloat16> hg = h.to_host();
  ok = true;
  for (int q = 0; q < P; ++q)
    ok = ok && __bfloat162float(hg[static_cast<size_t>(2 * q)]) == static_cast<float>(q) &&
         __bfloat162float(hg[static_cast<size_t>(2 * q + 1)]) == -static_cast<float>(q);
  check(ok, "all_gather bf16 in place", r);
  retnet::Buffer<int64_t, Cuda> i(be, 1);
  const int64_t v = 100 + r;
  i.copy_from_host(&v, 1);
  comm.broadcast(i.data(), 1, P - 1);
  check(i.to_host()[0] == 100 + P - 1, "broadcast from the last rank", r);
  const std::vector<int64_t> all = comm.gather_values(std::vector<int64_t>{r});  // host: the bootstrap
  ok = static_cast<int>(all.size()) == P;
  for (int q = 0; ok && q < P; ++q) ok = all[static_cast<size_t>(q)] == q;
  check(ok, "gather_values on host buffers", r);
}

// N ranks against this GPU alone (rank 0 runs the reference) over 50 steps; twice, for determinism.
template <class T>
void test_same_as_one_gpu(dist::NcclCommunicator& comm, const Cuda& be, int zero, double tol, const char* name) {
  const int r = comm.rank();
  std::vector<double> want;
  if (r == 0) {
    Runner<T> one(be, nullptr, 0);
    for (int64_t s = 0; s < 50; ++s) want.push_back(one.step(s));
  }
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {
    Runner<T> dp(be, &comm, zero);
    std::vector<double> got;
    for (int64_t s = 0; s < 50; ++s) got.push_back(dp.step(s));
    const std::vector<float> p = dp.params();
    if (run == 0) {
      first = p;
      double worst = 0;
      if (r == 0)
        for (size_t s = 0; s < got.size(); ++s)
          worst = std::max(worst, std::abs(got[s] - want[s]) / std::max(1.0, std::abs(want[s])));
      if (r == 0)
        std::printf("%s, zero %d, %d ranks: losses %.6f -> %.6f, worst relative difference from one GPU %.3g\n", name,
                    zero, comm.size(), got.front(), got.back(), worst);
      check(worst <= tol, std::string(name) + ": losses of " + std::to_string(comm.size()) + " ranks vs one GPU", r);
      check(r != 0 || got.back() < got.front() - 0.5, std::string(name) + ": it learns", r);
    } else {
      check(std::memcmp(first.data(), p.data(), sizeof(float) * p.size()) == 0,
            std::string(name) + ": a second run gives the same bits", r);
    }
    // every rank holds the same parameters
    std::vector<float> rank0 = p;
    comm.broadcast(rank0.data(), static_cast<int64_t>(rank0.size()), 0);
    check(std::memcmp(rank0.data(), p.data(), sizeof(float) * p.size()) == 0,
          std::string(name) + ": the parameters equal rank 0's", r);
  }
}

// Checkpoints: N ranks -> one GPU and one GPU -> N ranks, continuing with the losses of the uninterrupted run.
void test_resume(dist::NcclCommunicator& comm, const Cuda& be, int zero) {
  const int r = comm.rank();
  const std::string dir = std::filesystem::temp_directory_path().string();
  int64_t tag = ::getpid();
  comm.broadcast(&tag, 1, 0);
  const std::string path =
      dir + "/retnet_nccl_mpi_" + std::to_string(tag) + "_" + std::to_string(zero) + ".safetensors";
  // N -> 1
  {
    Runner<float> dp(be, &comm, zero);
    for (int64_t s = 0; s < 10; ++s) dp.step(s);
    dist::save_checkpoint(path, dp.trainer, 0);
    std::vector<double> cont;
    for (int64_t s = 10; s < 15; ++s) cont.push_back(dp.step(s));
    if (r == 0) {
      Runner<float> one(be, nullptr, 0);
      const retnet::TrainingCheckpointInfo info = retnet::load_training_checkpoint(path, one.trainer);
      check(info.step == 10, "resume: the step count", r);
      double worst = 0;
      for (int64_t s = 10; s < 15; ++s)
        worst = std::max(worst, std::abs(one.step(s) - cont[static_cast<size_t>(s - 10)]));
      std::printf("resume %d ranks -> 1 GPU (zero %d): worst loss difference %.3g\n", comm.size(), zero, worst);
      check(worst <= 1e-5, "resume N ranks -> 1 GPU (zero " + std::to_string(zero) + ")", r);
    }
  }
  comm.barrier();
  // 1 -> N
  std::vector<double> want;
  if (r == 0) {
    Runner<float> one(be, nullptr, 0);
    for (int64_t s = 0; s < 10; ++s) one.step(s);
    retnet::save_training_checkpoint(path, one.trainer, 0);
    for (int64_t s = 10; s < 15; ++s) want.push_back(one.step(s));
  }
  comm.barrier();
  {
    Runner<float> dp(be, &comm, zero);
    const retnet::TrainingCheckpointInfo info = dist::load_checkpoint(path, dp.trainer);
    check(info.step == 10, "resume on N ranks: the step count", r);
    double worst = 0;
    for (int64_t s = 10; s < 15; ++s) {
      const double l = dp.step(s);
      if (r == 0) worst = std::max(worst, std::abs(l - want[static_cast<size_t>(s - 10)]));
    }
    if (r == 0)
      std::printf("resume 1 GPU -> %d ranks (zero %d): worst loss difference %.3g\n", comm.size(), zero, worst);
    check(worst <= 1e-5, "resume 1 GPU -> N ranks (zero " + std::to_string(zero) + ")", r);
  }
  comm.barrier();
  if (r == 0) std::filesystem::remove(path);
}

}  // namespace

int main(int argc, char** argv) {
  dist::MpiContext mpi(&argc, &argv);
  dist::MpiCommunicator world;
  const dist::LocalRank local = dist::local_rank(world);
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess) gpus = 0;
  // every rank decides the same: skip when any host has fewer GPUs than ranks
  const std::vector<int64_t> short_of = world.gather_values(std::vector<int64_t>{local.count > gpus ? 1 : 0});
  if (std::find(short_of.begin(), short_of.end(), int64_t{1}) != short_of.end()) {
    if (world.rank() == 0)
      std::printf("skipped: %d ranks need one GPU each; a host has fewer (this one: %d ranks, %d GPUs)\n", world.size(),
                  local.count, gpus);
    return 0;
  }
  return dist::run_guarded(world, [&] {
    dist::select_device(local, world.describe());
    retnet::CudaContext ctx;
    dist::NcclCommunicator comm(world, ctx.backend().stream);
    if (comm.rank() == 0) std::printf("%s\n", comm.describe().c_str());
    test_collectives(comm, ctx.backend());
    for (const int zero : {0, 1}) {
      test_same_as_one_gpu<float>(comm, ctx.backend(), zero, 1e-5, "float");
      test_same_as_one_gpu<__nv_bfloat16>(comm, ctx.backend(), zero, 2e-2, "bf16");
      test_resume(comm, ctx.backend(), zero);
    }
    const std::vector<int64_t> all = world.gather_values(std::vector<int64_t>{failures});
    int64_t total = 0;
    for (int64_t f : all) total += f;
    if (world.rank() == 0)
      std::printf(total ? "%lld check(s) FAILED\n" : "all checks passed\n", static_cast<long long>(total));
    return total ? 1 : 0;
  });
}
