#pragma once
// RetentionConfig: the validated description of one multi-head retention op.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "retnet/core/error.hpp"

namespace retnet {

// How the per-head decays gamma_h are chosen.
enum class DecaySchedule {
  torchscale,  // gamma_h = 1 - 2^(-5-h)                                (torchscale, fla; paper Eq. 8)
  paper,       // gamma   = 1 - exp(linspace(log 1/32, log 1/512, H)) (the paper's experiments)
  custom,      // RetentionOptions::decays, one per head
};

// Which positive per-row multipliers retention applies (see docs/SEMANTICS.md).
enum class Normalization {
  torchscale,  // torchscale's decay-mask and score normalisers; states carry torchscale's scale
  raw,         // none: o_n = q_n . sum_m gamma^(n-m) k_m^T v_m, as fla computes it
};

inline const char* to_string(DecaySchedule d) {
  switch (d) {
    case DecaySchedule::torchscale:
      return "torchscale";
    case DecaySchedule::paper:
      return "paper";
    case DecaySchedule::custom:
      return "custom";
  }
  return "?";
}
inline const char* to_string(Normalization n) { return n == Normalization::torchscale ? "torchscale" : "raw"; }

struct RetentionOptions {
  int64_t heads = 8;
  int64_t key_dim = 64;    // per head (dk)
  int64_t value_dim = 64;  // per head (dv); may differ from key_dim
  int64_t chunk_size = 64;
  DecaySchedule decay_schedule = DecaySchedule::torchscale;
  std::vector<double> decays;  // custom schedule only: gamma_h in (0, 1)
  Normalization normalization = Normalization::torchscale;
  double eps = 1e-6;  // per-head group-norm epsilon of the layer around retention; >= 0
};

// Per-head decays for a schedule, in double.
inline std::vector<double> decay_values(DecaySchedule schedule, int64_t heads, const std::vector<double>& custom = {}) {
  std::vector<double> g(static_cast<size_t>(heads));
  switch (schedule) {
    case DecaySchedule::torchscale:
      for (int64_t h = 0; h < heads; ++h) g[static_cast<size_t>(h)] = 1.0 - std::exp2(-5.0 - static_cast<double>(h));
      break;
    case DecaySchedule::paper: {
      const double lo = std::log(1.0 / 32.0), hi = std::log(1.0 / 512.0);
      for (int64_t h = 0; h < heads; ++h) {
        const double t = heads == 1 ? 0.0 : static_cast<double>(h) / static_cast<double>(heads - 1);
        g[static_cast<size_t>(h)] = 1.0 - std::exp(lo + t * (hi - lo));
      }
      break;
    }
    case DecaySchedule::custom:
      g = custom;
      break;
  }
  return g;
}

class RetentionConfig {
 public:
  explicit RetentionConfig(RetentionOptions o) : o_(std::move(o)) {
    auto positive = [](const char* field, int64_t v) {
      require(v > 0, "RetentionConfig: ", field, " = ", v, " is invalid; it must be a positive integer");
    };
    positive("heads", o_.heads);
    positive("key_dim", o_.key_dim);
    positive("value_dim", o_.value_dim);
    positive("chunk_size", o_.chunk_size);
    require(o_.key_dim % 2 == 0, "RetentionConfig: key_dim = ", o_.key_dim,
            " is invalid; it must be even (rotation acts on pairs)");
    require(std::isfinite(o_.eps) && o_.eps >= 0, "RetentionConfig: eps = ", o_.eps,
            " is invalid; it must be finite and >= 0");
    if (o_.decay_schedule == DecaySchedule::custom) {
      require(static_cast<int64_t>(o_.decays.size()) == o_.heads, "RetentionConfig: decays has ", o_.decays.size(),
              " values; the custom schedule needs one per head (heads = ", o_.heads, ")");
    } else {
      require(o_.decays.empty(), "RetentionConfig: decays has ", o_.decays.size(),
              " values but decay_schedule = ", to_string(o_.decay_schedule),
              "; give decays only with DecaySchedule::custom");
    }
    gamma_ = decay_values(o_.decay_schedule, o_.heads, o_.decays);
    for (size_t h = 0; h < gamma_.size(); ++h) {
      require(std::isfinite(gamma_[h]) && gamma_[h] > 0.0 && gamma_[h] < 1.0, "RetentionConfig: decay of head ", h,
              " = ", gamma_[h], " is invalid; decays must lie in the open interval (0, 1)");
      log_gamma_.push_back(std::log(gamma_[h]));
    }
  }

  int64_t heads() const { return o_.heads; }
  int64_t key_dim() const { return o_.key_dim; }
  int64_t value_dim() const { return o_.value_dim; }
  int64_t chunk_size() const { return o_.chunk_size; }
  DecaySchedule decay_schedule() const { return o_.decay_schedule; }
  Normalization normalization() const { return o_.normalization; }
  double eps() const { return o_.eps; }
  const std::vector<double>& gammas() const { return gamma_; }
  const std::vector<double>& log_gammas() const { return log_gamma_; }
  const RetentionOptions& options() const { return o_; }

  // A copy with another chunk size or normalisation (validated again).
  RetentionConfig with_chunk_size(int64_t c) const {
    RetentionOptions o = o_;
    o.chunk_size = c;
    return RetentionConfig(o);
  }
  RetentionConfig with_normalization(Normalization n) const {
    RetentionOptions o = o_;
    o.normalization = n;
    return RetentionConfig(o);
  }

 private:
  RetentionOptions o_;
  std::vector<double> gamma_, log_gamma_;
};

}  // namespace retnet
