#pragma once
// AdamW (Loshchilov & Hutter) over the flat parameter buffer: decoupled weight decay, bias correction,
// the same update as torch.optim.AdamW. Weight decay applies to matrices (rank >= 2: projections,
// embeddings, the LM head), not to norm weights and biases.
#include <cmath>
#include <cstdint>
#include <vector>

#include "retnet/core/error.hpp"
#include "retnet/core/params.hpp"

namespace retnet {

struct AdamWConfig {
  double lr = 3e-4;  // peak learning rate (the schedule scales it)
  double beta1 = 0.9;
  double beta2 = 0.98;  // the paper's Adam betas
  double eps = 1e-8;
  double weight_decay = 0.05;

  void validate() const {
    require(std::isfinite(lr) && lr >= 0, "AdamWConfig: lr = ", lr, " must be finite and >= 0");
    require(beta1 >= 0 && beta1 < 1, "AdamWConfig: beta1 = ", beta1, " must lie in [0, 1)");
    require(beta2 >= 0 && beta2 < 1, "AdamWConfig: beta2 = ", beta2, " must lie in [0, 1)");
    require(eps > 0, "AdamWConfig: eps = ", eps, " must be positive");
    require(weight_decay >= 0, "AdamWConfig: weight_decay = ", weight_decay, " must be >= 0");
  }
};

template <class T>
class AdamW {
 public:
  AdamW(const ParamTable& table, AdamWConfig cfg)
      : cfg_(cfg), m_(static_cast<size_t>(table.total()), T(0)), v_(static_cast<size_t>(table.total()), T(0)) {
    cfg_.validate();
    for (const ParamInfo& p : table.entries()) ranges_.push_back({p.offset, p.numel(), p.shape.rank() >= 2});
  }

  // One update with learning rate lr (already scheduled).
  void step(T* params, const T* grads, double lr) {
    ++t_;
    const double b1 = cfg_.beta1, b2 = cfg_.beta2;
    const double bc1 = 1.0 - std::pow(b1, static_cast<double>(t_));
    const double bc2 = 1.0 - std::pow(b2, static_cast<double>(t_));
    const T step_size = static_cast<T>(lr / bc1), inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(bc2));
    const T eps = static_cast<T>(cfg_.eps);
    for (const Range& r : ranges_) {
      const T decay = r.decay ? static_cast<T>(1.0 - lr * cfg_.weight_decay) : T(1);
      T* p = params + r.offset;
      const T* g = grads + r.offset;
      T* m = m_.data() + r.offset;
      T* v = v_.data() + r.offset;
#pragma omp parallel for schedule(static) if (r.numel > 65536)
      for (int64_t i = 0; i < r.numel; ++i) {
        m[i] = static_cast<T>(b1) * m[i] + static_cast<T>(1 - b1) * g[i];
        v[i] = static_cast<T>(b2) * v[i] + static_cast<T>(1 - b2) * g[i] * g[i];
        p[i] = p[i] * decay - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
      }
    }
  }

  const AdamWConfig& config() const { return cfg_; }
  AdamWConfig& config() { return cfg_; }
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  T* exp_avg() { return m_.data(); }
  T* exp_avg_sq() { return v_.data(); }
  const T* exp_avg() const { return m_.data(); }
  const T* exp_avg_sq() const { return v_.data(); }

 private:
  struct Range {
    int64_t offset, numel;
    bool decay;
  };
  AdamWConfig cfg_;
  std::vector<T> m_, v_;
  std::vector<Range> ranges_;
  int64_t t_ = 0;
};

}  // namespace retnet
