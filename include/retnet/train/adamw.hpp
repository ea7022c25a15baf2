#pragma once
// AdamW (Loshchilov & Hutter) over the flat parameter buffer: decoupled weight decay, bias correction,
// the same update as torch.optim.AdamW. Weight decay applies to matrices (rank >= 2: projections,
// embeddings, the LM head), not to norm weights and biases.
// Parameters stored in a narrower type than master_t<T> (bf16) are updated through float master weights that the
// optimizer keeps: the update runs on the master copy and the parameters receive its rounding.
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "retnet/core/backend.hpp"
#include "retnet/core/buffer.hpp"
#include "retnet/core/error.hpp"
#include "retnet/core/params.hpp"
#include "retnet/core/precision.hpp"
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
  using master_type = master_t<T>;
  static constexpr bool has_master = !std::is_same_v<T, master_type>;

  AdamW(const ParamTable& table, AdamWConfig cfg, const BackendT& backend = BackendT{})
      : cfg_(cfg), be_(backend), m_(backend, table.total()), v_(backend, table.total()) {
    if constexpr (has_master) master_ = Buffer<master_type, BackendT>(backend, table.total());
    cfg_.validate();
    std::vector<AdamWRange> ranges;
    for (const ParamInfo& p : table.entries()) ranges.push_back({p.offset, p.numel(), p.shape.rank() >= 2 ? 1 : 0});
    ranges_ = Buffer<AdamWRange, BackendT>(backend, static_cast<int64_t>(ranges.size()));
    ranges_.copy_from_host(ranges.data(), ranges_.size());
  }

  // One update with learning rate lr (already scheduled); params and grads in the backend's memory. With master
  // weights the parameters must be those the master copy was last set from or written to (set_master).
  void step(T* params, const grad_t<T>* grads, double lr) {
    ++t_;
    const AdamWStepScalars s{lr, cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay, t_};
    if constexpr (has_master)
      adamw_update(be_, master_.data(), params, grads, m_.data(), v_.data(), ranges_.data(), ranges_.size(), s);
    else
      adamw_update(be_, params, grads, m_.data(), v_.data(), ranges_.data(), ranges_.size(), s);
  }

  // The master weights (has_master only), laid out like the parameters, in the backend's memory.
  Buffer<master_type, BackendT>& master_buffer() requires has_master { return master_; }
  const Buffer<master_type, BackendT>& master_buffer() const requires has_master { return master_; }
  // Sets the master weights from host values (e.g. a float checkpoint) or from the stored parameters.
  void set_master(const master_type* host, int64_t n) requires has_master {
    require(n == master_.size(), "AdamW::set_master: ", n, " values for ", master_.size(), " parameters");
    master_.copy_from_host(host, n);
  }
  void set_master_from_params(const std::vector<T>& host_params) requires has_master {
    const std::vector<master_type> wide(host_params.begin(), host_params.end());
    set_master(wide.data(), static_cast<int64_t>(wide.size()));
  }

  const AdamWConfig& config() const { return cfg_; }
  AdamWConfig& config() { return cfg_; }
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  // The moments in the backend's memory, laid out like the parameters.
  master_type* exp_avg() { return m_.data(); }
  master_type* exp_avg_sq() { return v_.data(); }
  const master_type* exp_avg() const { return m_.data(); }
  const master_type* exp_avg_sq() const { return v_.data(); }
  Buffer<master_type, BackendT>& exp_avg_buffer() { return m_; }
  Buffer<master_type, BackendT>& exp_avg_sq_buffer() { return v_; }
  const Buffer<master_type, BackendT>& exp_avg_buffer() const { return m_; }
  const Buffer<master_type, BackendT>& exp_avg_sq_buffer() const { return v_; }

 private:
  AdamWConfig cfg_;
  BackendT be_;
  Buffer<master_type, BackendT> m_, v_, master_;
  Buffer<AdamWRange, BackendT> ranges_;
  int64_t t_ = 0;
};

}  // namespace retnet
