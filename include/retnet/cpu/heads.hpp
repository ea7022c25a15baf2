#pragma once
// Grouped heads: key and value heads shared by groups of consecutive query heads (fla's num_kv_heads).
// Query head h reads key/value head h / group; the backward pass sums each group's gradients.
#include <cstdint>
#include <cstring>

#include "retnet/core/backend.hpp"
#include "retnet/core/error.hpp"

namespace retnet {

// y [rows, kv·group, width] from x [rows, kv, width] (distinct buffers).
template <class T>
void repeat_heads_forward(Cpu, T* y, const T* x, int64_t rows, int64_t kv, int64_t group, int64_t width) {
  require(rows >= 0 && kv >= 0 && group > 0 && width >= 0, "repeat_heads_forward: rows = ", rows, ", kv = ", kv,
          ", group = ", group, ", width = ", width, " are invalid");
  const size_t bytes = sizeof(T) * static_cast<size_t>(width);
#pragma omp parallel for schedule(static) if (rows * kv * group * width > 32768)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < kv * group; ++h)
      if (bytes) std::memcpy(y + (r * kv * group + h) * width, x + (r * kv + h / group) * width, bytes);
}

// dx [rows, kv, width] (overwrite) = the sum over each group of dy [rows, kv·group, width], in head order.
template <class T>
void repeat_heads_backward(Cpu, T* dx, const T* dy, int64_t rows, int64_t kv, int64_t group, int64_t width) {
  require(rows >= 0 && kv >= 0 && group > 0 && width >= 0, "repeat_heads_backward: rows = ", rows, ", kv = ", kv,
          ", group = ", group, ", width = ", width, " are invalid");
#pragma omp parallel for schedule(static) if (rows * kv * group * width > 32768)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < kv; ++h) {
      T* out = dx + (r * kv + h) * width;
      for (int64_t j = 0; j < width; ++j) {
        T s = 0;
        for (int64_t g = 0; g < group; ++g) s += dy[((r * kv + h) * group + g) * width + j];
        out[j] = s;
      }
    }
}

}  // namespace retnet
