#pragma once
// Value heads wider than the kernels take (fla's default RetNet has value heads of 512). Retention is linear in v:
// a head with value width dv = r·s equals r heads of width s that share its query, key and decay. The op then runs
// on r·H heads: q and k repeated per split head (cuda/heads.cuh, as for grouped heads), v and o reinterpreted ([B, T, H, r·s] is [B, T, H·r, s]), the
// state's [dk, dv] blocks rearranged into r blocks [dk, s] (and back), and the query and key gradients summed over
// the r copies in a fixed order. torchscale's normalisers depend only on q·k and the decay, so they agree too.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "retnet/core/config.hpp"
#include "retnet/core/retention_args.hpp"
#include "retnet/cuda/context.cuh"
#include "retnet/cuda/heads.cuh"
#include "retnet/cuda/ops_common.cuh"

namespace retnet {
namespace cuda_detail {

inline bool kernel_head_size(int64_t d) { return d == 64 || d == 128 || d == 256; }

// r > 1 when cfg's value heads must be split into r heads of a kernel size (the widest that divides dv); 1 otherwise
// (also when no split helps: the kernels' own check then names the size).
inline int64_t value_split(const RetentionConfig& cfg) {
  const int64_t dv = cfg.value_dim();
  if (kernel_head_size(dv) || !kernel_head_size(cfg.key_dim())) return 1;
  for (int64_t s : {256, 128, 64})
    if (dv % s == 0) return dv / s;
  return 1;
}

// cfg on r·H heads of width dv / r, each split head keeping its parent's decay.
inline RetentionConfig split_config(const RetentionConfig& cfg, int64_t r) {
  RetentionOptions o = cfg.options();
  o.heads = cfg.heads() * r;
  o.value_dim = cfg.value_dim() / r;
  o.decay_schedule = DecaySchedule::custom;
  o.decays.clear();
  for (double g : cfg.gammas())
    for (int64_t j = 0; j < r; ++j) o.decays.push_back(g);
  return RetentionConfig(o);
}

// state [B·H, dk, r·s] <-> split [B·H·r, dk, s]: split (bh·r + j, i, c) = state (bh, i, j·s + c). to_split: dst is
// the split layout and src the state; otherwise the other way round.
__global__ inline void state_split_kernel(float* dst, const float* src, int64_t bh, int64_t dk, int64_t r, int64_t s,
                                          bool to_split) {
  const int64_t n = bh * dk * r * s;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t c = i % s, row = i / s, ki = row % dk, g = row / dk, j = g % r, h = g / r;
    const int64_t o = (h * dk + ki) * r * s + j * s + c;
    if (to_split)
      dst[i] = src[o];
    else
      dst[o] = src[i];
  }
}

// scale [B·H] -> [B·H·r] (repeat; to_split) or back (the copies are equal: take the first).
__global__ inline void scale_split_kernel(float* dst, const float* src, int64_t bh, int64_t r, bool to_split) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (to_split && i < bh * r) dst[i] = src[i / r];
  if (!to_split && i < bh) dst[i] = src[i * r];
}

inline unsigned split_grid(int64_t n) { return static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096)); }

inline void state_split(const Cuda& ctx, float* dst, const float* src, int64_t bh, int64_t dk, int64_t r, int64_t s,
                        bool to_split) {
  state_split_kernel<<<split_grid(bh * dk * r * s), 256, 0, ctx.stream>>>(dst, src, bh, dk, r, s, to_split);
  RETNET_CUDA_CHECK_LAUNCH("state_split_kernel");
}
inline void scale_split(const Cuda& ctx, float* dst, const float* src, int64_t bh, int64_t r, bool to_split) {
  scale_split_kernel<<<static_cast<unsigned>((bh * r + 255) / 256), 256, 0, ctx.stream>>>(dst, src, bh, r, to_split);
  RETNET_CUDA_CHECK_LAUNCH("scale_split_kernel");
}

// Device memory of one split call, carved from one pool allocation.
class SplitBuffers {
 public:
  SplitBuffers(const Cuda& ctx, const std::vector<size_t>& bytes) : offsets_(bytes.size()) {
    size_t total = 0;
    for (size_t i = 0; i < bytes.size(); ++i) offsets_[i] = total, total += align_up(bytes[i]);
    ws_ = std::make_unique<Workspace>(ctx.stream, total);
  }
  template <class U>
  U* at(size_t i) const {
    return ws_->as<U>(offsets_[i]);
  }

 private:
  std::vector<size_t> offsets_;
  std::unique_ptr<Workspace> ws_;
};

// The split problem's views over q', k' (and the reinterpreted v), in the input's shapes with H·r heads.
struct SplitShapes {
  int64_t B, T, H, r, dk, s;
  Shape qk() const { return {B, T, H * r, dk}; }
  Shape vo() const { return {B, T, H * r, s}; }
  Shape kv() const { return {B, H * r, dk, s}; }
  Shape sc() const { return {B, H * r}; }
  int64_t rows_heads() const { return B * T * H; }
  int64_t bh() const { return B * H; }
};

inline SplitShapes split_shapes(const RetentionConfig& cfg, const Shape& q, int64_t r) {
  return {q[0], q[1], cfg.heads(), r, cfg.key_dim(), cfg.value_dim() / r};
}

}  // namespace cuda_detail
}  // namespace retnet
