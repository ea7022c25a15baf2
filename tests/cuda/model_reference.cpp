#include "model_reference.hpp"

#include <algorithm>

#include "retnet/retnet.hpp"

namespace retnet_test {

using namespace retnet;

std::vector<float> ref_init_params(const ModelConfig& cfg, uint64_t seed) {
  Model<float> m(cfg);
  m.init_torchscale(seed);
  return m.params_to_host();
}

namespace {
Model<double> double_model(const ModelCase& c) {
  Model<double> m(c.cfg);
  std::vector<double> p(c.params.begin(), c.params.end());
  m.params_from_host(p.data(), static_cast<int64_t>(p.size()));
  return m;
}
}  // namespace

std::vector<double> ref_logits(const ModelCase& c, Form form) {
  Model<double> m = double_model(c);
  const Tensor<double> out = m.forward(HostView<const int64_t>(c.tokens.data(), {c.batch, c.length}), form);
  return out.storage();
}

RefLossGrad ref_loss_grad(const ModelCase& c, Form form, int64_t segment, int64_t dropout_step, uint64_t dropout_seed) {
  Model<double> m = double_model(c);
  GradContext<double> ctx;
  const int64_t count = count_targets(c.targets.data(), c.batch * c.length);
  Buffer<double, Cpu> grads(cpu, m.param_count());
  const DropoutKey key{dropout_seed, static_cast<uint64_t>(std::max<int64_t>(dropout_step, 0)), 0};
  const LossSum l = loss_and_grad(m, ctx, c.tokens.data(), c.targets.data(), c.batch, c.length, form, grads.data(),
                                  1.0 / static_cast<double>(count), segment, dropout_step >= 0 ? &key : nullptr);
  return {l.mean(), grads.to_host()};
}

std::vector<double> ref_train(const ModelCase& c, const TrainOptions& o, int64_t steps, TrainState& state) {
  Model<float> m(c.cfg);
  m.params_from_host(state.params.data(), static_cast<int64_t>(state.params.size()));
  const TrainerConfig tc = trainer_config(o);
  Trainer<float> tr(m, tc);
  if (!state.m.empty()) {
    tr.optimizer().exp_avg_buffer().copy_from_host(state.m.data(), static_cast<int64_t>(state.m.size()));
    tr.optimizer().exp_avg_sq_buffer().copy_from_host(state.v.data(), static_cast<int64_t>(state.v.size()));
  }
  tr.set_step_count(state.step);
  std::vector<double> losses;
  const HostView<const int64_t> x(c.tokens.data(), {c.batch, c.length}), y(c.targets.data(), {c.batch, c.length});
  for (int64_t s = 0; s < steps; ++s) losses.push_back(tr.step(x, y).loss);
  state.params = m.params_to_host();
  state.m = tr.optimizer().exp_avg_buffer().to_host();
  state.v = tr.optimizer().exp_avg_sq_buffer().to_host();
  state.step = tr.step_count();
  return losses;
}

}  // namespace retnet_test
