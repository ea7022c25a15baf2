#pragma once
// generate --device cuda: the GPU half of the generate program (generate_cuda.cu, compiled by nvcc). generate.cpp
// reads the checkpoint and the prompts on the host and hands the float parameters over.
#include <cstdint>
#include <string>
#include <vector>

#include "retnet/infer/continuous.hpp"
#include "retnet/nn/config.hpp"

namespace retnet_examples::generate {

// Continues every prompt on the current GPU with `slots` rows decoding together (continuous batching, sampling on
// the GPU), with the weights in float or (bf16 = true) rounded to bf16, the state in float either way; returns the
// new tokens of each prompt and a line naming the device.
struct CudaResult {
  std::vector<std::vector<int64_t>> tokens;
  std::string device;
};
CudaResult generate_cuda(const retnet::ModelConfig& cfg, const std::vector<float>& params,
                         const std::vector<std::vector<int64_t>>& prompts, const retnet::infer::GenerateOptions& g,
                         int64_t slots, bool bf16);

}  // namespace retnet_examples::generate
