#pragma once
// torchscale's rotation ("theta_shift"): interleaved pairs (2k, 2k+1) rotated by n * theta_k with
// theta_k = 10000^(-k / (dk/2 - 1)) (linspace exponents, not RoPE's arange(0, dk, 2) / dk).
// RotationStyle::rope takes RoPE's theta_k = 10000^(-2k / dk) instead, with the angle n * theta_k rounded to
// float32 as fla computes it (it matters at long positions). fla pairs (k, k + dk/2) rather than (2k, 2k+1);
// io/fla_format.hpp reorders the rows of q_proj and k_proj on load so that the interleaved rotation here equals it.
#include <cmath>
#include <cstdint>
#include <vector>

#include "retnet/core/error.hpp"

namespace retnet {

// theta_k for k = 0 .. key_dim/2 - 1.
inline std::vector<double> rotation_angles(int64_t key_dim) {
  require(key_dim > 0 && key_dim % 2 == 0, "rotation_angles: key_dim = ", key_dim, " must be positive and even");
  const int64_t half = key_dim / 2;
  std::vector<double> theta(static_cast<size_t>(half));
  for (int64_t k = 0; k < half; ++k) {
    const double e = half == 1 ? 0.0 : static_cast<double>(k) / static_cast<double>(half - 1);
    theta[static_cast<size_t>(k)] = 1.0 / std::pow(10000.0, e);
  }
  return theta;
}

enum class RotationStyle { torchscale, rope };

// RoPE's theta_k = 1 / 10000^(2k / dk) for k = 0 .. key_dim/2 - 1, rounded to float32 at each step as fla does.
inline std::vector<float> rope_angles(int64_t key_dim) {
  require(key_dim > 0 && key_dim % 2 == 0, "rope_angles: key_dim = ", key_dim, " must be positive and even");
  std::vector<float> theta(static_cast<size_t>(key_dim / 2));
  for (size_t k = 0; k < theta.size(); ++k) {
    const float e = static_cast<float>(2 * k) / static_cast<float>(key_dim);
    theta[k] = 1.0f / static_cast<float>(std::pow(10000.0, static_cast<double>(e)));
  }
  return theta;
}

// Tables sin/cos[position][k] for positions [start, start + count), half = key_dim / 2 columns.
template <class T>
struct RotationTable {
  int64_t start = 0, count = 0, half = 0;
  std::vector<T> sin, cos;  // [count, half]

  RotationTable(int64_t key_dim, int64_t start_position, int64_t positions,
                RotationStyle style = RotationStyle::torchscale)
      : start(start_position), count(positions), half(key_dim / 2) {
    require(start_position >= 0, "RotationTable: start position ", start_position, " is negative");
    require(positions >= 0, "RotationTable: position count ", positions, " is negative");
    const bool rope = style == RotationStyle::rope;
    const std::vector<double> theta = rope ? std::vector<double>{} : rotation_angles(key_dim);
    const std::vector<float> theta_f = rope ? rope_angles(key_dim) : std::vector<float>{};
    sin.resize(static_cast<size_t>(count * half));
    cos.resize(static_cast<size_t>(count * half));
    for (int64_t n = 0; n < count; ++n)
      for (int64_t k = 0; k < half; ++k) {
        const size_t ks = static_cast<size_t>(k);
        const double a = rope ? static_cast<double>(static_cast<float>(start + n) * theta_f[ks])
                              : static_cast<double>(start + n) * theta[ks];
        sin[static_cast<size_t>(n * half + k)] = static_cast<T>(std::sin(a));
        cos[static_cast<size_t>(n * half + k)] = static_cast<T>(std::cos(a));
      }
  }
};

// In place: x[2k], x[2k+1] <- (x0 cos - x1 sin, x1 cos + x0 sin) for one row of key_dim values.
// inverse = true applies the transpose (rotation by -angle), which is also the backward of the forward.
template <class T>
inline void rotate_row(T* x, const T* sin_row, const T* cos_row, int64_t half, bool inverse = false) {
  for (int64_t k = 0; k < half; ++k) {
    const T s = inverse ? -sin_row[k] : sin_row[k];
    const T c = cos_row[k];
    const T x0 = x[2 * k], x1 = x[2 * k + 1];
    x[2 * k] = x0 * c - x1 * s;
    x[2 * k + 1] = x1 * c + x0 * s;
  }
}

}  // namespace retnet
