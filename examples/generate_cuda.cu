// generate --device cuda: Model<float or bf16, Cuda> with the parameters generate.cpp read, decoding with
// continuous batching, the step replayed as a CUDA graph and sampling on the GPU (retnet/cuda/generate.cuh).
#include <cuda_bf16.h>

#include <string>
#include <vector>

#include "generate_cuda.hpp"
#include "retnet/cuda.cuh"
#include "retnet/cuda/generate.cuh"

namespace retnet_examples::generate {

namespace {

template <class T>
std::vector<std::vector<int64_t>> decode(const retnet::Cuda& be, const retnet::ModelConfig& cfg,
                                         const std::vector<float>& params,
                                         const std::vector<std::vector<int64_t>>& prompts,
                                         const retnet::infer::GenerateOptions& g, int64_t slots) {
  retnet::Model<T, retnet::Cuda> model(cfg, be);
  const std::vector<T> stored(params.begin(), params.end());  // bf16: rounded to nearest even
  model.params_from_host(stored.data(), static_cast<int64_t>(stored.size()));
  retnet::infer::ContinuousOptions c;
  c.slots = slots;
  return retnet::infer::generate_continuous(model, prompts, g, c);
}

}  // namespace

CudaResult generate_cuda(const retnet::ModelConfig& cfg, const std::vector<float>& params,
                         const std::vector<std::vector<int64_t>>& prompts, const retnet::infer::GenerateOptions& g,
                         int64_t slots, bool bf16) {
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
  r.device = "cuda:" + std::to_string(dev) + " (" + prop.name + (bf16 ? ", bf16 weights" : ", float weights") + ")";
  r.tokens = bf16 ? decode<__nv_bfloat16>(gpu.backend(), cfg, params, prompts, g, slots)
                  : decode<float>(gpu.backend(), cfg, params, prompts, g, slots);
  return r;
}

}  // namespace retnet_examples::generate
