#include "generate_reference.hpp"

#include "retnet/retnet.hpp"

namespace retnet_test {

using namespace retnet;

namespace {
Model<float> cpu_model(const ModelConfig& cfg, const std::vector<float>& params) {
  Model<float> m(cfg);
  m.params_from_host(params.data(), static_cast<int64_t>(params.size()));
  return m;
}
}  // namespace

std::vector<std::vector<int64_t>> ref_greedy(const ModelConfig& cfg, const std::vector<float>& params,
                                             const std::vector<std::vector<int64_t>>& prompts, int64_t max_new) {
  Model<float> m = cpu_model(cfg, params);
  infer::GenerateOptions g;
  g.max_new_tokens = max_new;
  g.sampling.greedy = true;
  return infer::generate(m, prompts, g);
}

RefPrefill ref_prefill(const ModelConfig& cfg, const std::vector<float>& params, const std::vector<int64_t>& prompt) {
  Model<float> m = cpu_model(cfg, params);
  auto st = m.make_state(1);
  const Tensor<float> l =
      m.prefill(HostView<const int64_t>(prompt.data(), {1, static_cast<int64_t>(prompt.size())}), st);
  RefPrefill r;
  for (size_t i = 0; i < st.kv.size(); ++i) {
    r.kv.push_back(st.kv[i].storage());
    r.scale.push_back(st.scale[i].storage());
  }
  r.logits = l.storage();
  return r;
}

std::vector<float> ref_step_from_file(const ModelConfig& cfg, const std::vector<float>& params, const std::string& path,
                                      const std::vector<int64_t>& tokens) {
  Model<float> m = cpu_model(cfg, params);
  auto st = infer::load_state(m, path);
  return m.step(HostView<const int64_t>(tokens.data(), {static_cast<int64_t>(tokens.size())}), st).storage();
}

}  // namespace retnet_test
