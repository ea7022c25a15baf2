// generate --device cuda: Model<float, Cuda> with the parameters generate.cpp read, decoding with continuous
// batching, the step replayed as a CUDA graph and sampling on the GPU (retnet/cuda/generate.cuh).
#include <string>
#include <vector>

#include "generate_cuda.hpp"
#include "retnet/cuda.cuh"
#include "retnet/cuda/generate.cuh"

namespace retnet_examples::generate {

CudaResult generate_cuda(const retnet::ModelConfig& cfg, const std::vector<float>& params,
                         const std::vector<std::vector<int64_t>>& prompts, const retnet::infer::GenerateOptions& g,
                         int64_t slots) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  retnet::require(e == cudaSuccess && count > 0, "--device cuda: no CUDA device is available (",
                  e == cudaSuccess ? "none found" : cudaGetErrorString(e), ")");
  int dev = 0;
  RETNET_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  RETNET_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  retnet::CudaContext gpu;
  CudaResult r;
  r.device = "cuda:" + std::to_string(dev) + " (" + prop.name + ")";
  {
    retnet::Model<float, retnet::Cuda> model(cfg, gpu.backend());
    model.params_from_host(params.data(), static_cast<int64_t>(params.size()));
    retnet::infer::ContinuousOptions c;
    c.slots = slots;
    r.tokens = retnet::infer::generate_continuous(model, prompts, g, c);
  }
  return r;
}

}  // namespace retnet_examples::generate
