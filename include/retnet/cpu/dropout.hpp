#pragma once
// Dropout masks and their element-wise uses on the CPU. A mask holds the multiplier of each element: 0 where
// dropped, 1 / (1 - p) where kept (inverted dropout), times the row's drop-path multiplier where the site also has
// drop path (0 or 1 / (1 - p_path) for the whole batch row). The decisions come from core/dropout.hpp.
#include <cstdint>

#include "retnet/core/backend.hpp"
#include "retnet/core/dropout.hpp"

namespace retnet {

// mask [B·Tn, width]: row (b, t) is global row key.row_offset + b at absolute position starts[b] + t (starts
// null: 0). p: element-wise dropout rate; p_path: drop-path rate (whole rows; 0 for none).
template <class T>
void fill_dropout_mask(Cpu, T* mask, const DropoutMaskParams& mp, int64_t B, int64_t Tn, int64_t width,
                       const int64_t* starts) {
  const T keep_scale = T(1) / T(1 - mp.p), path_scale = T(1) / T(1 - mp.p_path);
  const int64_t N = B * Tn;
#pragma omp parallel for schedule(static) if (N * width > 32768)
  for (int64_t r = 0; r < N; ++r) {
    const int64_t b = r / Tn, t = r % Tn;
    const int64_t row = mp.row_offset + b;
    T row_scale = T(1);
    if (mp.p_path > 0) row_scale = dropout_row_hash(mp.path_stream, row) >= mp.path_threshold ? path_scale : T(0);
    T* m = mask + r * width;
    if (mp.p > 0 && row_scale != T(0)) {
      const uint64_t pos_hash = dropout_position_hash(mp.elem_stream, row, starts ? starts[b] + t : t);
      const T kept = keep_scale * row_scale;
      for (int64_t j = 0; j < width; ++j) m[j] = dropout_element_hash(pos_hash, j) >= mp.threshold ? kept : T(0);
    } else {
      for (int64_t j = 0; j < width; ++j) m[j] = row_scale;
    }
  }
}

// x [n] *= mask
template <class T>
void apply_mask(Cpu, T* x, const T* mask, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) x[i] *= mask[i];
}

// y [n] = x · mask  (y may alias x)
template <class T>
void masked_copy(Cpu, T* y, const T* x, const T* mask, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * mask[i];
}

// branch [n] = branch · mask + residual: the masked branch added to the residual stream
template <class T>
void masked_residual_add(Cpu, T* branch, const T* mask, const T* residual, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) branch[i] = branch[i] * mask[i] + residual[i];
}

}  // namespace retnet
