#pragma once
// Recurrent form on the GPU: the sequence form (same engine as the chunkwise one, with torchscale's recurrent
// multipliers mu_n = 1 / sqrt(scale_n)) and the single decoding step for many sequences at once.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "retnet/cuda/retention_chunkwise.cuh"

namespace retnet {
namespace cuda_detail {

// One decoding step. grid (B*H, dv/64), block 256 = 64 value columns x 4 row slices.
//   torchscale: s' = s gamma + 1, kv' = kv gamma sqrt(s/s') + k^T v / sqrt(s'), o = q kv'
//   raw:        kv' = gamma kv + k^T v, o = q kv'
template <class E>
__global__ void __launch_bounds__(256)
    recurrent_step_kernel(const E* __restrict__ q, const E* __restrict__ k, const E* __restrict__ v,
                          float* __restrict__ kv, float* __restrict__ scale, E* __restrict__ o, int H, int dk, int dv,
                          int torchscale, HeadDecays dec) {
  __shared__ float qs[256], ks[256], part[4][64];
  const int bh = blockIdx.x, h = bh % H;
  const int col = blockIdx.y * 64 + (threadIdx.x & 63), slice = threadIdx.x >> 6;
  for (int i = threadIdx.x; i < dk; i += blockDim.x) {
    qs[i] = static_cast<float>(q[static_cast<int64_t>(bh) * dk + i]);
    ks[i] = static_cast<float>(k[static_cast<int64_t>(bh) * dk + i]);
  }
  __syncthreads();
  const double gamma = exp(dec.lng[h]);
  float a = static_cast<float>(gamma), bcoef = 1.f;
  if (torchscale) {
    const double s = static_cast<double>(scale[bh]);
    const double sn = s * gamma + 1.0;
    a = static_cast<float>(gamma * sqrt(s / sn));
    bcoef = static_cast<float>(1.0 / sqrt(sn));
  }
  const float vv = static_cast<float>(v[static_cast<int64_t>(bh) * dv + col]) * bcoef;
  float* st = kv + static_cast<int64_t>(bh) * dk * dv + col;
  float acc = 0.f;
  for (int r = slice; r < dk; r += 4) {
    const float x = st[static_cast<int64_t>(r) * dv] * a + ks[r] * vv;
    st[static_cast<int64_t>(r) * dv] = x;
    acc += qs[r] * x;
  }
  part[slice][threadIdx.x & 63] = acc;
  __syncthreads();
  if (slice == 0) {
    const float outv = part[0][threadIdx.x] + part[1][threadIdx.x] + part[2][threadIdx.x] + part[3][threadIdx.x];
    o[static_cast<int64_t>(bh) * dv + col] = static_cast<E>(outv);
  }
}

static __global__ void step_scale_kernel(float* scale, int64_t BH, int H, HeadDecays dec) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < BH) scale[i] = static_cast<float>(static_cast<double>(scale[i]) * exp(dec.lng[i % H]) + 1.0);
}

}  // namespace cuda_detail

template <class E>
void retention_recurrent_forward(const Cuda& ctx, const RetentionConfig& cfg,
                                 const RetentionInputs<E, Device, float>& in,
                                 const RetentionOutputs<E, Device, float>& out, RetentionSaved* saved = nullptr) {
  cuda_detail::forward_impl<E>("retention_recurrent_forward (CUDA)", ctx, Form::recurrent, cfg, in, out, saved);
}

template <class E>
void retention_recurrent_backward(const Cuda& ctx, const RetentionConfig& cfg,
                                  const RetentionInputs<E, Device, float>& in,
                                  const RetentionOutputGrads<E, Device, float>& gout,
                                  const RetentionInputGrads<E, Device, float>& gin,
                                  const RetentionSaved* saved = nullptr) {
  cuda_detail::backward_impl<E>("retention_recurrent_backward (CUDA)", ctx, Form::recurrent, cfg, in, gout, gin, saved);
}

// One decoding step for every (batch, head): q, k [B, H, dk], v, o [B, H, dv] in E; state_kv [B, H, dk, dv] and
// state_scale [B, H] in float, updated in place (state_scale only in torchscale mode; it may be empty in raw
// mode). Same math as the CPU step.
template <class E>
void retention_recurrent_step(const Cuda& ctx, const RetentionConfig& cfg, DeviceView<const E> q, DeviceView<const E> k,
                              DeviceView<const E> v, DeviceView<float> state_kv, DeviceView<float> state_scale,
                              DeviceView<E> o) {
  using namespace cuda_detail;
  const char* op = "retention_recurrent_step (CUDA)";
  detail::expect_present(op, "q", q);
  detail::expect_present(op, "k", k);
  detail::expect_present(op, "v", v);
  detail::expect_present(op, "state_kv", state_kv);
  detail::expect_present(op, "o", o);
  require(q.rank() == 3, op, ": q has shape ", q.shape().to_string(), ", expected rank 3 [batch, heads, key_dim]");
  const int64_t B = q.size(0), H = cfg.heads(), dk = cfg.key_dim(), dv = cfg.value_dim();
  require(B > 0, op, ": batch = ", B, " (from q ", q.shape().to_string(), ") must be positive");
  detail::expect_shape(op, "q", q.shape(), {B, H, dk});
  detail::expect_shape(op, "k", k.shape(), {B, H, dk});
  detail::expect_shape(op, "v", v.shape(), {B, H, dv});
  detail::expect_shape(op, "state_kv", state_kv.shape(), {B, H, dk, dv});
  detail::expect_shape(op, "o", o.shape(), {B, H, dv});
  const bool ts = cfg.normalization() == Normalization::torchscale;
  if (ts) {
    require(!state_scale.empty(), op,
            ": state_scale is missing; Normalization::torchscale needs it (zeros for an empty state)");
    detail::expect_shape(op, "state_scale", state_scale.shape(), {B, H});
  }
  require(H <= kMaxHeads, op, ": heads = ", H, " exceeds the CUDA limit of ", kMaxHeads);
  require(dk <= 256 && dv % 64 == 0, op, ": key_dim must be at most 256 and value_dim a multiple of 64 (got ", dk, ", ",
          dv, ")");
  require(B * H < (int64_t{1} << 31), op, ": batch * heads too large");
  expect_device_view(op, "q", q, sizeof(E));
  expect_device_view(op, "k", k, sizeof(E));
  expect_device_view(op, "v", v, sizeof(E));
  expect_device_view(op, "state_kv", state_kv, 4);
  if (ts) expect_device_view(op, "state_scale", state_scale, 4);
  expect_device_view(op, "o", o, sizeof(E));
  const HeadDecays dec = head_decays(cfg);
  const dim3 grid(static_cast<unsigned>(B * H), static_cast<unsigned>(dv / 64));
  recurrent_step_kernel<E><<<grid, 256, 0, ctx.stream>>>(
      q.data(), k.data(), v.data(), state_kv.data(), ts ? state_scale.data() : nullptr, o.data(), static_cast<int>(H),
      static_cast<int>(dk), static_cast<int>(dv), ts ? 1 : 0, dec);
  RETNET_CUDA_CHECK_LAUNCH("retention recurrent step");
  if (ts) {
    step_scale_kernel<<<static_cast<unsigned>((B * H + 127) / 128), 128, 0, ctx.stream>>>(state_scale.data(), B * H,
                                                                                          static_cast<int>(H), dec);
    RETNET_CUDA_CHECK_LAUNCH("retention recurrent step (scale)");
  }
}

}  // namespace retnet
