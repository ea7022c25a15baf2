#pragma once
// The CPU side of the GPU model tests: the same model on the CPU backend, in its own translation unit
// (model_reference.cpp), so that no Eigen code reaches nvcc.
#include <cstdint>
#include <vector>

#include "retnet/core/config.hpp"
#include "retnet/core/retention_args.hpp"
#include "retnet/nn/config.hpp"
#include "retnet/train/trainer.hpp"

namespace retnet_test {

struct ModelCase {
  retnet::ModelConfig cfg;
  std::vector<float> params;  // flat, laid out by the model's ParamTable
  int64_t batch = 1, length = 1;
  std::vector<int64_t> tokens, targets;  // [batch, length]
};

struct TrainOptions {
  double lr = 1e-3, weight_decay = 0.05, grad_clip = 1.0;
  int64_t warmup = 0, accumulation = 1, segment = 0;
  uint64_t dropout_seed = 0;
  retnet::Form form = retnet::Form::chunkwise;
};

// The trainer settings of o, for either backend.
inline retnet::TrainerConfig trainer_config(const TrainOptions& o) {
  retnet::TrainerConfig tc;
  tc.adamw.lr = o.lr;
  tc.adamw.weight_decay = o.weight_decay;
  tc.grad_clip = o.grad_clip;
  tc.schedule.warmup_steps = o.warmup;
  tc.accumulation_steps = o.accumulation;
  tc.segment_length = o.segment;
  tc.dropout_seed = o.dropout_seed;
  tc.form = o.form;
  return tc;
}

// torchscale's initialisation of cfg's parameters on the CPU, in float.
std::vector<float> ref_init_params(const retnet::ModelConfig& cfg, uint64_t seed);
// Logits [batch, length, vocab] of the model in double.
std::vector<double> ref_logits(const ModelCase& c, retnet::Form form);
// Mean loss and its gradient with respect to every parameter, in double; with a dropout key when dropout_step >= 0.
struct RefLossGrad {
  double loss = 0;
  std::vector<double> grads;
};
RefLossGrad ref_loss_grad(const ModelCase& c, retnet::Form form, int64_t segment, int64_t dropout_step = -1,
                          uint64_t dropout_seed = 0);
// Losses of `steps` training steps on the same batch with the CPU trainer in float; params, AdamW moments and step
// count start from (and are left in) the given state.
struct TrainState {
  std::vector<float> params, m, v;
  int64_t step = 0;
};
std::vector<double> ref_train(const ModelCase& c, const TrainOptions& o, int64_t steps, TrainState& state);

}  // namespace retnet_test
