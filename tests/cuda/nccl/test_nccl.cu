// NCCL with one rank on one GPU (no mpirun): the communicator's collectives on device and host buffers, and the
// data-parallel device training step (DeviceDataParallel over NcclCommunicator) against the plain device step,
// bit for bit, in float and bf16, with and without ZeRO-1; a ZeRO-1 checkpoint resumes on a plain trainer.
// Several ranks: tests/cuda/nccl/nccl_mpi.cu.
#include <cuda_bf16.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "gpu_test.hpp"
#include "nccl/train_case.hpp"
#include "retnet/dist/checkpoint.hpp"
#include "retnet/dist/nccl.cuh"

namespace {

using retnet::Buffer;
using retnet::Cuda;
using retnet::HostView;
using retnet_test::have_gpu;
namespace dist = retnet::dist;

TEST_CASE("NCCL communicator, one rank: collectives on device and host buffers", "[nccl]") {
  if (!have_gpu()) return;
  retnet::CudaContext ctx;
  dist::NcclCommunicator comm(dist::single_process(), ctx.backend().stream);
  CHECK(comm.rank() == 0);
  CHECK(comm.size() == 1);
  CHECK(comm.device_buffers());
  CHECK(comm.describe().find("NCCL rank 0 of 1") != std::string::npos);

  const std::vector<float> v{1.5f, -2.0f, 3.25f, 7.0f, 0.5f, 9.0f};
  Buffer<float, Cuda> a(ctx.backend(), 6), b(ctx.backend(), 6);
  a.copy_from_host(v.data(), 6);
  comm.all_reduce(a.data(), 6);
  CHECK(a.to_host() == v);
  comm.reduce_scatter(a.data(), b.data(), 6);
  CHECK(b.to_host() == v);
  b.zero();
  comm.all_gather(a.data(), b.data(), 6);
  CHECK(b.to_host() == v);
  comm.all_gather(a.data(), a.data(), 6);  // in place
  CHECK(a.to_host() == v);
  comm.broadcast(a.data(), 6, 0);
  CHECK(a.to_host() == v);

  Buffer<int64_t, Cuda> i(ctx.backend(), 2);
  const std::vector<int64_t> iv{-3, 1ll << 40};
  i.copy_from_host(iv.data(), 2);
  comm.all_reduce(i.data(), 2, dist::ReduceOp::max);
  CHECK(i.to_host() == iv);

  Buffer<__nv_bfloat16, Cuda> h(ctx.backend(), 4);
  const std::vector<__nv_bfloat16> hv{__float2bfloat16(1.0f), __float2bfloat16(-0.5f), __float2bfloat16(3.0f),
                                      __float2bfloat16(2.0f)};
  h.copy_from_host(hv.data(), 4);
  comm.all_gather_async(static_cast<const void*>(h.data()), static_cast<void*>(h.data()), 4, dist::DType::bf16)->wait();
  const std::vector<__nv_bfloat16> hb = h.to_host();
  CHECK(std::memcmp(hb.data(), hv.data(), sizeof(__nv_bfloat16) * 4) == 0);

  // host buffers take the bootstrap communicator
  std::vector<double> host{1.0, 2.0};
  comm.all_reduce(host.data(), 2);
  CHECK(host == std::vector<double>{1.0, 2.0});
  CHECK(comm.gather_values(std::vector<int64_t>{42}) == std::vector<int64_t>{42});
  std::vector<float> host_out(6);
  CHECK_THROWS_WITH(comm.reduce_scatter(a.data(), host_out.data(), 6), Catch::Contains("host memory"));
  comm.barrier();
}

TEST_CASE("GPU trainer: ZeRO-1 or several ranks need a communicator over device buffers", "[nccl]") {
  if (!have_gpu()) return;
  retnet::CudaContext ctx;
  retnet::Model<float, Cuda> m(retnet_test::nccl_model_config(), ctx.backend());
  retnet::TrainerConfig tc;
  tc.dist.zero_stage = 1;
  CHECK_THROWS_WITH((retnet::Trainer<float, Cuda>(m, tc)), Catch::Contains("device buffers"));
}

// Losses, norms and final parameters of `steps` steps, as bits.
struct Run {
  std::vector<double> losses, norms;
  std::vector<uint8_t> params;
};

template <class T>
Run train(const Cuda& be, dist::Communicator* comm, int zero, int64_t bucket_bytes, int64_t steps, int64_t accum,
          int64_t segment, double clip) {
  retnet::Model<T, Cuda> m(retnet_test::nccl_model_config(), be);
  m.init_torchscale(5);
  retnet::TrainerConfig tc;
  tc.adamw.lr = 3e-3;
  tc.grad_clip = clip;
  tc.accumulation_steps = accum;
  tc.segment_length = segment;
  tc.dist.comm = comm;
  tc.dist.zero_stage = zero;
  tc.dist.bucket_bytes = bucket_bytes;
  retnet::Trainer<T, Cuda> tr(m, tc);
  REQUIRE((tr.device_data_parallel() != nullptr) == (comm != nullptr));
  Run r;
  std::vector<int64_t> x, y;
  const int64_t B = 4, len = 48;
  for (int64_t s = 0; s < steps; ++s) {
    retnet_test::nccl_batch(s, B, len, 0, B, x, y);
    const retnet::StepStats st =
        tr.step(HostView<const int64_t>(x.data(), {B, len}), HostView<const int64_t>(y.data(), {B, len}));
    r.losses.push_back(st.loss);
    r.norms.push_back(st.grad_norm);
  }
  const std::vector<T> p = m.params_to_host();
  r.params.resize(p.size() * sizeof(T));
  std::memcpy(r.params.data(), p.data(), r.params.size());
  return r;
}

template <class T>
void check_same_as_plain(const char* what) {
  retnet::CudaContext ctx;
  dist::NcclCommunicator comm(dist::single_process(), ctx.backend().stream);
  struct Case {
    int zero;
    int64_t bucket_bytes, accum, segment;
    double clip;
    bool norm_bits;  // ZeRO-1 with several buckets sums the squares in bucket order: the norm may differ in its last
                     // bits
  };
  const int64_t one_bucket = int64_t(1) << 30, small = 24 * 1024;
  for (const Case& c : {Case{0, one_bucket, 1, 0, 1.0, true}, Case{0, small, 2, 20, 0.5, true},
                        Case{1, one_bucket, 1, 0, 0.5, true}, Case{1, small, 2, 20, 0.0, false}}) {
    INFO(what << ": zero " << c.zero << ", bucket bytes " << c.bucket_bytes << ", accumulation " << c.accum
              << ", segment " << c.segment << ", clip " << c.clip);
    const Run plain = train<T>(ctx.backend(), nullptr, 0, c.bucket_bytes, 6, c.accum, c.segment, c.clip);
    const Run dp = train<T>(ctx.backend(), &comm, c.zero, c.bucket_bytes, 6, c.accum, c.segment, c.clip);
    CHECK(dp.losses == plain.losses);
    CHECK(dp.params == plain.params);
    if (c.norm_bits) {
      CHECK(dp.norms == plain.norms);
    } else {
      for (size_t s = 0; s < plain.norms.size(); ++s) CHECK(dp.norms[s] == Approx(plain.norms[s]).epsilon(1e-6));
    }
    CHECK(plain.losses.back() < plain.losses.front());  // it trains
  }
}

TEST_CASE("NCCL data parallel, one rank: the device step equals the plain device step (float, bits)", "[nccl]") {
  if (!have_gpu()) return;
  check_same_as_plain<float>("float");
}

TEST_CASE("NCCL data parallel, one rank: the device step equals the plain device step (bf16, bits)", "[nccl][bf16]") {
  if (!have_gpu()) return;
  check_same_as_plain<__nv_bfloat16>("bf16");
}

TEST_CASE("NCCL data parallel, one rank: a ZeRO-1 checkpoint resumes on a plain trainer with the same bits", "[nccl]") {
  if (!have_gpu()) return;
  retnet::CudaContext ctx;
  dist::NcclCommunicator comm(dist::single_process(), ctx.backend().stream);
  const std::string path =
      (std::filesystem::temp_directory_path() / ("retnet_nccl_ckpt_" + std::to_string(::getpid()) + ".safetensors"))
          .string();
  const int64_t B = 4, len = 48;
  std::vector<int64_t> x, y;
  auto make = [&](retnet::Model<__nv_bfloat16, Cuda>& m, dist::Communicator* c) {
    retnet::TrainerConfig tc;
    tc.adamw.lr = 3e-3;
    tc.grad_clip = 0;  // ZeRO-1's norm may differ in its last bits (bucket order), and with it a clipping factor
    tc.dist.comm = c;
    tc.dist.zero_stage = c ? 1 : 0;
    tc.dist.bucket_bytes = 24 * 1024;
    return retnet::Trainer<__nv_bfloat16, Cuda>(m, tc);
  };
  retnet::Model<__nv_bfloat16, Cuda> m1(retnet_test::nccl_model_config(), ctx.backend()),
      m2(retnet_test::nccl_model_config(), ctx.backend());
  m1.init_torchscale(9);
  m2.init_torchscale(10);
  auto t1 = make(m1, &comm);
  auto t2 = make(m2, nullptr);
  auto step = [&](auto& tr, int64_t s) {
    retnet_test::nccl_batch(s, B, len, 0, B, x, y);
    return tr.step(HostView<const int64_t>(x.data(), {B, len}), HostView<const int64_t>(y.data(), {B, len})).loss;
  };
  for (int64_t s = 0; s < 4; ++s) step(t1, s);
  dist::save_checkpoint(path, t1, 0);
  const retnet::TrainingCheckpointInfo info = retnet::load_training_checkpoint(path, t2);
  std::filesystem::remove(path);
  CHECK(info.step == 4);
  for (int64_t s = 4; s < 8; ++s) {
    INFO("step " << s);
    CHECK(step(t1, s) == step(t2, s));
  }
  const std::vector<__nv_bfloat16> p1 = m1.params_to_host(), p2 = m2.params_to_host();
  CHECK(std::memcmp(p1.data(), p2.data(), p1.size() * sizeof(__nv_bfloat16)) == 0);
}

}  // namespace
