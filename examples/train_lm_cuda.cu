// train_lm --device cuda: the training loop of train_loop.hpp instantiated for retnet::Cuda on the current GPU,
// with its own stream and cuBLAS handle, in float or bf16 storage; under mpirun (builds with NCCL) one GPU per rank,
// the gradients summed by NCCL. Host-only parts (sampling, files) are in train_lm.cpp.
#include <cstddef>
#include <string>
#include <vector>

#include "retnet/cuda.cuh"
#include "train_loop.hpp"
#if RETNET_TRAIN_LM_NCCL
#include <memory>

#include "retnet/dist/nccl.cuh"
#endif

namespace retnet_examples::train_lm {

void require_device_memory(double bytes, const std::string& what) {
  size_t free_bytes = 0, total_bytes = 0;
  RETNET_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const double gib = 1024.0 * 1024.0 * 1024.0;
  char need[32], have[32];
  std::snprintf(need, sizeof need, "%.3g GiB", bytes / gib);
  std::snprintf(have, sizeof have, "%.3g GiB", static_cast<double>(free_bytes) / gib);
  retnet::require(bytes <= static_cast<double>(free_bytes), what, " would need about ", need,
                  " of GPU memory; the GPU has ", have, " free");
}

int train_cuda(const Options& o, const std::vector<int64_t>& text, retnet::dist::Communicator& comm) {
#if RETNET_TRAIN_LM_NCCL
  // one GPU per rank: the rank's index on its host picks it
  const retnet::dist::LocalRank local = comm.size() > 1 ? retnet::dist::local_rank(comm) : retnet::dist::LocalRank{};
#endif
  int dev = 0;
  agree(comm, [&] {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    retnet::require(e == cudaSuccess && count > 0, "--device cuda: no CUDA device is available (",
                    e == cudaSuccess ? "none found" : cudaGetErrorString(e), ")");
#if RETNET_TRAIN_LM_NCCL
    if (comm.size() > 1) retnet::dist::select_device(local, comm.describe());
#endif
    RETNET_CUDA_CHECK(cudaGetDevice(&dev));
  });
  cudaDeviceProp prop{};
  RETNET_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  retnet::CudaContext gpu(o.tf32);
#if RETNET_TRAIN_LM_NCCL
  std::unique_ptr<retnet::dist::NcclCommunicator> nccl;
  if (comm.size() > 1) nccl = std::make_unique<retnet::dist::NcclCommunicator>(comm, gpu.backend().stream);
  retnet::dist::Communicator& run_comm = nccl ? *nccl : comm;
#else
  retnet::dist::Communicator& run_comm = comm;
#endif
  const std::string device =
      "cuda:" + std::to_string(dev) + " (" + prop.name + ", " + o.precision + (o.tf32 ? ", tf32" : "") + ")";
  if (o.precision == "bf16") return train<__nv_bfloat16>(o, text, gpu.backend(), run_comm, device);
  return train<float>(o, text, gpu.backend(), run_comm, device);
}

}  // namespace retnet_examples::train_lm
