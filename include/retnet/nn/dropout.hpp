#pragma once
// Training-time dropout and drop path (stochastic depth) masks, torchscale's placement (see nn/model.hpp).
//
// A mask holds the multiplier of each element: 0 where dropped, 1 / (1 - p) where kept (inverted dropout),
// times the row's drop-path multiplier where the site also has drop path (0 or 1 / (1 - p_path) for the
// whole batch row). Every decision is a pure function of (seed, step, layer, site, global batch row,
// absolute position, feature) through a counter-based hash, so masks do not depend on the thread count,
// the backward pass can rely on them, resuming at a step reproduces them, segments of one sequence see the
// masks the whole sequence would, and micro-batches see those of the full batch.
#include <cstdint>

namespace retnet {

// Non-null at Model::forward_train means training mode.
struct DropoutKey {
  uint64_t seed = 0;
  uint64_t step = 0;       // optimizer step
  int64_t row_offset = 0;  // global batch row of the call's first row (micro-batches)
};

enum class DropoutSite : uint64_t {
  embedding = 1,
  retention = 2,       // retention branch output (dropout, then drop path)
  ffn_activation = 3,  // act(fc1 x) ⊙ gate x (GLU) or act(fc1 x) (MLP)
  ffn_output = 4,      // FFN branch output (dropout after fc2, then drop path)
};

// splitmix64's finaliser: a bijective 64-bit mix.
inline uint64_t dropout_mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Chained so that every field changes the result (no arithmetic packing that could collide).
inline uint64_t dropout_stream(const DropoutKey& key, int64_t layer, DropoutSite site) {
  uint64_t h = dropout_mix(key.seed + 0x9E3779B97F4A7C15ULL);
  h = dropout_mix(h ^ key.step);
  h = dropout_mix(h ^ static_cast<uint64_t>(layer));
  return dropout_mix(h ^ static_cast<uint64_t>(site));
}

inline uint64_t dropout_row_hash(uint64_t stream, int64_t global_row) {
  return dropout_mix(stream ^ dropout_mix(static_cast<uint64_t>(global_row) + 0x632BE59BD9B4E019ULL));
}

// Decisions compare a uniform 64-bit hash with p · 2^64 (p < 1, so the product fits).
inline uint64_t dropout_threshold(double p) { return static_cast<uint64_t>(p * 18446744073709551616.0); }

// Drop-path rate of layer `layer` of `layers`: linspace(0, rate, layers)[layer], as torchscale.
inline double drop_path_rate_of(double rate, int64_t layer, int64_t layers) {
  return layers > 1 ? rate * static_cast<double>(layer) / static_cast<double>(layers - 1) : 0.0;
}

// mask [B·Tn, width]: row (b, t) is global row key.row_offset + b at absolute position starts[b] + t (starts
// null: 0). p: element-wise dropout rate; p_path: drop-path rate (whole rows; 0 for none).
template <class T>
void fill_dropout_mask(T* mask, const DropoutKey& key, int64_t layer, DropoutSite site, double p, double p_path,
                       int64_t B, int64_t Tn, int64_t width, const int64_t* starts) {
  const uint64_t elem_stream = dropout_stream(key, layer, site);
  const uint64_t path_stream = dropout_mix(elem_stream ^ 0xD1B54A32D192ED03ULL);  // independent of the elements
  const uint64_t thr = dropout_threshold(p), path_thr = dropout_threshold(p_path);
  const T keep_scale = T(1) / T(1 - p), path_scale = T(1) / T(1 - p_path);
  const int64_t N = B * Tn;
#pragma omp parallel for schedule(static) if (N * width > 32768)
  for (int64_t r = 0; r < N; ++r) {
    const int64_t b = r / Tn, t = r % Tn;
    const int64_t row = key.row_offset + b;
    T row_scale = T(1);
    if (p_path > 0) row_scale = dropout_row_hash(path_stream, row) >= path_thr ? path_scale : T(0);
    T* m = mask + r * width;
    if (p > 0 && row_scale != T(0)) {
      const uint64_t pos_hash =
          dropout_mix(dropout_row_hash(elem_stream, row) ^ static_cast<uint64_t>(starts ? starts[b] + t : t));
      const T kept = keep_scale * row_scale;
      for (int64_t j = 0; j < width; ++j)
        m[j] = dropout_mix(pos_hash + static_cast<uint64_t>(j) * 0x9E3779B97F4A7C15ULL) >= thr ? kept : T(0);
    } else {
      for (int64_t j = 0; j < width; ++j) m[j] = row_scale;
    }
  }
}

// x [n] *= mask
template <class T>
void apply_mask(T* x, const T* mask, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) x[i] *= mask[i];
}

// y [n] = x · mask  (y may alias x)
template <class T>
void masked_copy(T* y, const T* x, const T* mask, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * mask[i];
}

// branch [n] = branch · mask + residual: the masked branch added to the residual stream
template <class T>
void masked_residual_add(T* branch, const T* mask, const T* residual, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) branch[i] = branch[i] * mask[i] + residual[i];
}

}  // namespace retnet
