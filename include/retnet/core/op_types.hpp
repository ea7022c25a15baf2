#pragma once
// Plain types that the ops of every backend share (layer code passes the same values to the CPU and the CUDA
// overloads). No Eigen and no OpenMP here, so CUDA headers include this instead of the CPU headers.
#include <cstdint>
#include <string>

#include "retnet/core/error.hpp"

namespace retnet {

// How a backward pass writes an activation gradient.
enum class GradMode { ignore, overwrite, accumulate };

enum class Activation { gelu, swish };

inline Activation activation_from_string(const std::string& s) {
  if (s == "gelu") return Activation::gelu;
  if (s == "swish" || s == "silu") return Activation::swish;
  fail("activation '", s, "' is not supported; expected 'gelu' or 'swish'");
}

// One tensor of the flat buffer; decay: whether weight decay applies (matrices, not norm weights or biases).
struct AdamWRange {
  int64_t offset = 0, numel = 0;
  int64_t decay = 0;
};

// The scalars of one update, computed once on the host: t is the step count after this update (>= 1).
struct AdamWStepScalars {
  double lr = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  int64_t t = 1;
};

inline constexpr int64_t kIgnoreIndex = -100;  // PyTorch's default

struct LossSum {
  double sum = 0;     // Σ over counted rows of −log softmax(logits)[target]
  int64_t count = 0;  // rows whose target is not the ignore index
  double mean() const { return count ? sum / static_cast<double>(count) : 0.0; }
};

}  // namespace retnet
