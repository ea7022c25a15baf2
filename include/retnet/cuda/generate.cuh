#pragma once
// Generation on the GPU: the CUDA TokenPicker of infer/continuous.hpp. Each round replays the decode graph (the
// step of every slot, then the sampling kernel writing the next ids into the state's token buffer) and copies only
// the B ids to the host. A refilled slot's first token is sampled from its prefill logits by the same kernel.
#include <cstdint>
#include <vector>

#include "retnet/cuda/context.cuh"
#include "retnet/cuda/decode_graph.cuh"
#include "retnet/cuda/sampling.cuh"
#include "retnet/infer/continuous.hpp"
#include "retnet/nn/model.hpp"

namespace retnet::infer {

template <class T>
class TokenPicker<T, Cuda> {
 public:
  using ModelT = Model<T, Cuda>;
  TokenPicker(ModelT& model, typename ModelT::State& state, const SamplingOptions& o, double repetition_penalty)
      : state_(state),
        sampler_(model.backend(), state.batch(), model.config().vocab_size, o, repetition_penalty),
        graph_(model, state, &sampler_) {}
  void start(int64_t row, uint64_t seed, const std::vector<int64_t>& prompt) {
    sampler_.reset_row(row, seed, prompt.data(), static_cast<int64_t>(prompt.size()));
  }
  int64_t pick_row(int64_t row) {
    sampler_.sample(state_.logits(), state_.tokens(), row, 1);
    return sampler_.fetch(state_.tokens(), row, 1)[0];
  }
  const int64_t* step_and_pick() {
    graph_.replay();
    return sampler_.fetch(state_.tokens(), 0, state_.batch());
  }

 private:
  typename ModelT::State& state_;
  DeviceSampler sampler_;
  DecodeGraph<T> graph_;
};

}  // namespace retnet::infer
