#pragma once
// The CPU side of the GPU generation tests (generate_reference.cpp), in its own translation unit so that no Eigen
// code reaches nvcc.
#include <cstdint>
#include <string>
#include <vector>

#include "retnet/nn/config.hpp"

namespace retnet_test {

// Greedy continuations of every prompt by infer::generate on the CPU in float.
std::vector<std::vector<int64_t>> ref_greedy(const retnet::ModelConfig& cfg, const std::vector<float>& params,
                                             const std::vector<std::vector<int64_t>>& prompts, int64_t max_new);

// The state and last logits after the CPU prefill of one prompt (batch 1), in float.
struct RefPrefill {
  std::vector<std::vector<float>> kv, scale;  // per layer
  std::vector<float> logits;                  // [vocab]
};
RefPrefill ref_prefill(const retnet::ModelConfig& cfg, const std::vector<float>& params,
                       const std::vector<int64_t>& prompt);

// Loads a state file on the CPU, steps it with `tokens` (one per row) and returns the logits [batch, vocab].
std::vector<float> ref_step_from_file(const retnet::ModelConfig& cfg, const std::vector<float>& params,
                                      const std::string& path, const std::vector<int64_t>& tokens);

}  // namespace retnet_test
