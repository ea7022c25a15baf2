#pragma once
// Dropout and drop-path decisions as a pure function of (seed, step, layer, site, global batch row, absolute
// position, feature) through a counter-based hash. Both backends compute masks from these functions, so a mask
// does not depend on the backend, the thread count, segmenting or micro-batching. nn/model.hpp says where the
// masks apply.
#include <cstdint>

#include "retnet/core/host_device.hpp"

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
RETNET_HD uint64_t dropout_mix(uint64_t x) {
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

// The stream of the whole-row (drop-path) decisions, independent of the element decisions.
RETNET_HD uint64_t dropout_path_stream(uint64_t elem_stream) {
  return dropout_mix(elem_stream ^ 0xD1B54A32D192ED03ULL);
}

RETNET_HD uint64_t dropout_row_hash(uint64_t stream, int64_t global_row) {
  return dropout_mix(stream ^ dropout_mix(static_cast<uint64_t>(global_row) + 0x632BE59BD9B4E019ULL));
}

// Hash of (row, absolute position); element j of that row is kept when dropout_element_hash(pos_hash, j) >= threshold.
RETNET_HD uint64_t dropout_position_hash(uint64_t elem_stream, int64_t global_row, int64_t position) {
  return dropout_mix(dropout_row_hash(elem_stream, global_row) ^ static_cast<uint64_t>(position));
}
RETNET_HD uint64_t dropout_element_hash(uint64_t pos_hash, int64_t j) {
  return dropout_mix(pos_hash + static_cast<uint64_t>(j) * 0x9E3779B97F4A7C15ULL);
}

// Decisions compare a uniform 64-bit hash with p · 2^64 (p < 1, so the product fits).
inline uint64_t dropout_threshold(double p) { return static_cast<uint64_t>(p * 18446744073709551616.0); }

// Drop-path rate of layer `layer` of `layers`: linspace(0, rate, layers)[layer], as torchscale.
inline double drop_path_rate_of(double rate, int64_t layer, int64_t layers) {
  return layers > 1 ? rate * static_cast<double>(layer) / static_cast<double>(layers - 1) : 0.0;
}

// Everything a mask fill needs besides the sizes, computed once on the host.
struct DropoutMaskParams {
  uint64_t elem_stream = 0, path_stream = 0;
  uint64_t threshold = 0, path_threshold = 0;
  double p = 0, p_path = 0;
  int64_t row_offset = 0;

  DropoutMaskParams(const DropoutKey& key, int64_t layer, DropoutSite site, double p_elem, double p_row)
      : elem_stream(dropout_stream(key, layer, site)),
        path_stream(dropout_path_stream(elem_stream)),
        threshold(dropout_threshold(p_elem)),
        path_threshold(dropout_threshold(p_row)),
        p(p_elem),
        p_path(p_row),
        row_offset(key.row_offset) {}
};

}  // namespace retnet
