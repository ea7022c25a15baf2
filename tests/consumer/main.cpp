// Calls chunkwise retention through the installed package and checks it against the recurrent form.
#include <cmath>
#include <cstdio>
#include <random>
#include <retnet/retnet.hpp>

int main() {
  using namespace retnet;
  RetentionConfig cfg(RetentionOptions{
      .heads = 2, .key_dim = 8, .value_dim = 12, .chunk_size = 5, .normalization = Normalization::raw});
  const int64_t B = 2, T = 17;
  Tensor<double> q({B, T, 2, 8}), k({B, T, 2, 8}), v({B, T, 2, 12}), o1({B, T, 2, 12}), o2({B, T, 2, 12});
  std::mt19937 rng(1);
  std::normal_distribution<double> n;
  for (auto* t : {&q, &k, &v})
    for (auto& x : t->storage()) x = n(rng);
  RetentionInputs<double> in{q.cview(), k.cview(), v.cview(), {}, {}};
  retention_forward(cpu, Form::chunkwise, cfg, in, RetentionOutputs<double>{o1.view(), {}, {}});
  retention_forward(cpu, Form::recurrent, cfg, in, RetentionOutputs<double>{o2.view(), {}, {}});
  double worst = 0;
  for (int64_t i = 0; i < o1.numel(); ++i) worst = std::max(worst, std::abs(o1[i] - o2[i]));
  std::printf("consumer: chunkwise vs recurrent max difference %.3g\n", worst);
  return worst < 1e-9 ? 0 : 1;
}
