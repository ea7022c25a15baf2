#pragma once
// Rotation of query and key heads by their absolute positions (core/rotation.hpp), fused with the key scaling.
#include <cstdint>

#include "retnet/core/backend.hpp"
#include "retnet/core/rotation.hpp"

namespace retnet {

// x [batch, length, heads, dk] in place. Row (b, t) uses table row row_off[b] + t of sin/cos [rows, dk/2].
// Forward (inverse = false): x <- R(scale · x). Backward (inverse = true): x <- scale · Rᵀ(x), its transpose.
template <class T>
void rotate_heads(Cpu, T* x, const T* sin, const T* cos, const int64_t* row_off, int64_t batch, int64_t length,
                  int64_t heads, int64_t dk, T scale, bool inverse) {
  const int64_t half = dk / 2, rows = batch * length;
  const bool scaled = scale != T(1);
#pragma omp parallel for schedule(static) if (rows * heads * dk > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / length, t = r % length;
    const int64_t pos = row_off[b] + t;
    const T* s = sin + pos * half;
    const T* c = cos + pos * half;
    for (int64_t h = 0; h < heads; ++h) {
      T* xr = x + (r * heads + h) * dk;
      if (scaled && !inverse)
        for (int64_t j = 0; j < dk; ++j) xr[j] *= scale;
      rotate_row(xr, s, c, half, inverse);
      if (scaled && inverse)
        for (int64_t j = 0; j < dk; ++j) xr[j] *= scale;
    }
  }
}

}  // namespace retnet
