#pragma once
// AdamW (Loshchilov & Hutter) over the flat parameter buffer: decoupled weight decay, bias correction,
// the same update as torch.optim.AdamW. Weight decay applies to matrices (rank >= 2: projections,
// embeddings, the LM head), not to norm weights and biases.
#include <cmath>
#include <cstdint>
#include <vector>

#include "retnet/core/backend.hpp"
#include "retnet/core/buffer.hpp"
#include "retnet/core/error.hpp"
#include "retnet/core/params.hpp"
#include "retnet/nn/backend_ops.hpp"

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

template <class T, Backend BackendT = Cpu>
class AdamW {
 public:
  AdamW(const ParamTable& table, AdamWConfig cfg, const BackendT& backend = BackendT{})
      : cfg_(cfg), be_(backend), m_(backend, table.total()), v_(backend, table.total()) {
    cfg_.validate();
    std::vector<AdamWRange> ranges;
    for (const ParamInfo& p : table.entries()) ranges.push_back({p.offset, p.numel(), p.shape.rank() >= 2 ? 1 : 0});
    ranges_ = Buffer<AdamWRange, BackendT>(backend, static_cast<int64_t>(ranges.size()));
    ranges_.copy_from_host(ranges.data(), ranges_.size());
  }

  // One update with learning rate lr (already scheduled); params and grads in the backend's memory.
  void step(T* params, const T* grads, double lr) {
    ++t_;
    const AdamWStepScalars s{lr, cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay, t_};
    adamw_update(be_, params, grads, m_.data(), v_.data(), ranges_.data(), ranges_.size(), s);
  }

  const AdamWConfig& config() const { return cfg_; }
  AdamWConfig& config() { return cfg_; }
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  // The moments in the backend's memory, laid out like the parameters.
  T* exp_avg() { return m_.data(); }
  T* exp_avg_sq() { return v_.data(); }
  const T* exp_avg() const { return m_.data(); }
  const T* exp_avg_sq() const { return v_.data(); }
  Buffer<T, BackendT>& exp_avg_buffer() { return m_; }
  Buffer<T, BackendT>& exp_avg_sq_buffer() { return v_; }
  const Buffer<T, BackendT>& exp_avg_buffer() const { return m_; }
  const Buffer<T, BackendT>& exp_avg_sq_buffer() const { return v_; }

 private:
  AdamWConfig cfg_;
  BackendT be_;
  Buffer<T, BackendT> m_, v_;
  Buffer<AdamWRange, BackendT> ranges_;
  int64_t t_ = 0;
};

}  // namespace retnet
