#pragma once
// Learning-rate schedule: linear warm-up, then cosine or linear decay to min_ratio · peak (or constant).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "retnet/core/error.hpp"

namespace retnet {

enum class LrDecay { cosine, linear, constant };

inline LrDecay lr_decay_from_string(const std::string& s) {
  if (s == "cosine") return LrDecay::cosine;
  if (s == "linear") return LrDecay::linear;
  if (s == "constant") return LrDecay::constant;
  fail("learning-rate decay '", s, "' is not supported; expected cosine, linear or constant");
}

struct LrSchedule {
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  LrDecay decay = LrDecay::cosine;
  double min_ratio = 0.1;

  // Multiplier of the peak rate at optimizer step `step` (0-based).
  double factor(int64_t step) const {
    require(total_steps > 0 && warmup_steps >= 0, "LrSchedule: total_steps = ", total_steps,
            ", warmup_steps = ", warmup_steps, " are invalid");
    if (step < warmup_steps) return static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
    if (decay == LrDecay::constant) return 1.0;
    const double span = static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
    const double p = std::clamp(static_cast<double>(step - warmup_steps) / span, 0.0, 1.0);
    const double shape = decay == LrDecay::cosine ? 0.5 * (1.0 + std::cos(3.14159265358979323846 * p)) : 1.0 - p;
    return min_ratio + (1.0 - min_ratio) * shape;
  }
};

}  // namespace retnet
