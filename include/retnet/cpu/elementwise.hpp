#pragma once
// Copies, fills and reductions over flat buffers on the CPU: the element-wise work that layer and training code
// hands to its backend.
#include <cstdint>
#include <cstring>

#include "retnet/core/backend.hpp"

namespace retnet {

// dst [n] = src (distinct buffers)
template <class T>
void copy_elements(Cpu, T* dst, const T* src, int64_t n) {
  if (n > 0) std::memcpy(dst, src, sizeof(T) * static_cast<size_t>(n));
}

// dst [n] = 0
template <class T>
void zero_elements(Cpu, T* dst, int64_t n) {
  if (n > 0) std::memset(dst, 0, sizeof(T) * static_cast<size_t>(n));
}

// x [n] *= f
template <class T>
void scale_elements(Cpu, T* x, T f, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= f;
}

// Σ x² in double, in index order (deterministic).
template <class T>
double sum_squares(Cpu, const T* x, int64_t n) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  return ss;
}

}  // namespace retnet
