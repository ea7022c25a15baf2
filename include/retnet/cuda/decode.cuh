#pragma once
// What a decoding step needs on the device beyond the layers' ops: the rotation rows of each row's current position
// and the positions' advance. Both read positions from device memory, so a step holds no host work and can be
// captured into a CUDA graph and replayed with new positions.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "retnet/core/rotation.hpp"
#include "retnet/cuda/context.cuh"
#include "retnet/cuda/ops_common.cuh"

namespace retnet {

namespace cuda_detail {

constexpr int kMaxRotationPairs = 128;  // key_dim up to 256

struct RotationAngles {
  double theta[kMaxRotationPairs];
  bool rope;  // RotationStyle::rope: the angle is position · theta in float32 (theta a float32 value)
};

// Row b: sin/cos of positions[b] · theta_k, in double as the host's RotationTable, rounded to T.
template <class T>
__global__ void step_rotation_kernel(T* sin_out, T* cos_out, const int64_t* positions, int64_t rows, int half,
                                     RotationAngles a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * half) return;
  const int64_t b = i / half;
  const int k = static_cast<int>(i % half);
  const double x =
      a.rope ? static_cast<double>(__fmul_rn(static_cast<float>(positions[b]), static_cast<float>(a.theta[k])))
             : static_cast<double>(positions[b]) * a.theta[k];
  double s = 0, c = 0;
  sincos(x, &s, &c);
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    sin_out[i] = static_cast<T>(s);
    cos_out[i] = static_cast<T>(c);
  } else {
    sin_out[i] = from_float<T>(static_cast<float>(s));
    cos_out[i] = from_float<T>(static_cast<float>(c));
  }
}

static __global__ void advance_positions_kernel(int64_t* positions, int64_t n, int64_t by) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) positions[i] += by;
}

}  // namespace cuda_detail

// sin/cos [rows, key_dim/2] (device) = the rotation table rows (core/rotation.hpp, in `style`) of positions[0 .. rows)
// (device int64).
template <class T>
void step_rotation_rows(const Cuda& ctx, T* sin, T* cos, const int64_t* positions, int64_t rows, int64_t key_dim,
                        RotationStyle style = RotationStyle::torchscale) {
  using namespace cuda_detail;
  require(key_dim > 0 && key_dim % 2 == 0 && key_dim / 2 <= kMaxRotationPairs,
          "step_rotation_rows: key_dim = ", key_dim, " must be even and at most ", 2 * kMaxRotationPairs);
  require_count("step_rotation_rows", "rows", rows);
  if (rows == 0) return;
  static thread_local int64_t cached_dim = 0;
  static thread_local RotationStyle cached_style = RotationStyle::torchscale;
  static thread_local RotationAngles angles{};
  if (cached_dim != key_dim || cached_style != style) {
    if (style == RotationStyle::rope) {
      const std::vector<float> t = rope_angles(key_dim);
      for (size_t k = 0; k < t.size(); ++k) angles.theta[k] = t[k];
    } else {
      const std::vector<double> t = rotation_angles(key_dim);
      for (size_t k = 0; k < t.size(); ++k) angles.theta[k] = t[k];
    }
    angles.rope = style == RotationStyle::rope;
    cached_dim = key_dim;
    cached_style = style;
  }
  const int half = static_cast<int>(key_dim / 2);
  const int64_t n = rows * half;
  step_rotation_kernel<T>
      <<<static_cast<unsigned>((n + 255) / 256), 256, 0, ctx.stream>>>(sin, cos, positions, rows, half, angles);
  RETNET_CUDA_CHECK_LAUNCH("step_rotation_kernel");
}

// positions[0 .. n) += by, on the device.
inline void advance_positions(const Cuda& ctx, int64_t* positions, int64_t n, int64_t by) {
  using namespace cuda_detail;
  require_count("advance_positions", "n", n);
  if (n == 0) return;
  advance_positions_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, ctx.stream>>>(positions, n, by);
  RETNET_CUDA_CHECK_LAUNCH("advance_positions_kernel");
}

}  // namespace retnet
