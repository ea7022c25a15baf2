#pragma once
// The AdamW update over the ranges of a flat parameter buffer on the GPU: the CUDA side of cpu/adamw.hpp, one
// launch for all ranges. Every block walks every range with a grid-stride loop (the range table is small and sits
// in the cache), so elements outside every range stay untouched. The float arithmetic is the CPU's, step by step
// (products and sums rounded separately, no fused multiply-adds).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "retnet/core/op_types.hpp"
#include "retnet/cuda/context.cuh"
#include "retnet/cuda/ops_common.cuh"

namespace retnet {

namespace cuda_detail {

struct AdamWFloats {
  float b1, one_minus_b1, b2, one_minus_b2, step_size, inv_sqrt_bc2, eps, decay;
};

inline AdamWFloats adamw_floats(const AdamWStepScalars& s) {
  require(s.t >= 1, "adamw_update: step count t = ", s.t, " must be at least 1");
  const double bc1 = 1.0 - std::pow(s.beta1, static_cast<double>(s.t));
  const double bc2 = 1.0 - std::pow(s.beta2, static_cast<double>(s.t));
  AdamWFloats f{};
  f.b1 = static_cast<float>(s.beta1);
  f.one_minus_b1 = static_cast<float>(1 - s.beta1);
  f.b2 = static_cast<float>(s.beta2);
  f.one_minus_b2 = static_cast<float>(1 - s.beta2);
  f.step_size = static_cast<float>(s.lr / bc1);
  f.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  f.eps = static_cast<float>(s.eps);
  f.decay = static_cast<float>(1.0 - s.lr * s.weight_decay);
  return f;
}

// One element: m, v, p updated in place (p in float); returns the new p.
__device__ __forceinline__ float adamw_step(float& p, float g, float& m, float& v, float decay, const AdamWFloats& f) {
  m = __fadd_rn(__fmul_rn(f.b1, m), __fmul_rn(f.one_minus_b1, g));
  v = __fadd_rn(__fmul_rn(f.b2, v), __fmul_rn(__fmul_rn(f.one_minus_b2, g), g));
  const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(v), f.inv_sqrt_bc2), f.eps);
  p = __fsub_rn(__fmul_rn(p, decay), __fdiv_rn(__fmul_rn(f.step_size, m), denom));
  return p;
}

// params may be null (float master only); master then is the parameter buffer itself (P = float).
template <class P>
__global__ void adamw_kernel(float* master, P* params, const float* grads, float* m, float* v, const AdamWRange* ranges,
                             int64_t count, AdamWFloats f, bool packed) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t ri = 0; ri < count; ++ri) {
    const AdamWRange r = ranges[ri];
    if (r.numel <= 0) continue;
    const float decay = r.decay ? f.decay : 1.0f;
    float* pr = master + r.offset;
    const float* gr = grads + r.offset;
    float* mr = m + r.offset;
    float* vr = v + r.offset;
    P* out = params ? params + r.offset : nullptr;
    int64_t scalar_from = 0;
    // Four floats at a time where the range starts on a 16-byte boundary (the buffers' bases are checked on the
    // host; a bf16 copy needs 8-byte alignment for its four values).
    if (packed && r.offset % 4 == 0) {
      const int64_t quads = r.numel / 4;
      for (int64_t q = first; q < quads; q += stride) {
        float4 p4 = reinterpret_cast<float4*>(pr)[q];
        const float4 g4 = reinterpret_cast<const float4*>(gr)[q];
        float4 m4 = reinterpret_cast<float4*>(mr)[q];
        float4 v4 = reinterpret_cast<float4*>(vr)[q];
        adamw_step(p4.x, g4.x, m4.x, v4.x, decay, f);
        adamw_step(p4.y, g4.y, m4.y, v4.y, decay, f);
        adamw_step(p4.z, g4.z, m4.z, v4.z, decay, f);
        adamw_step(p4.w, g4.w, m4.w, v4.w, decay, f);
        reinterpret_cast<float4*>(pr)[q] = p4;
        reinterpret_cast<float4*>(mr)[q] = m4;
        reinterpret_cast<float4*>(vr)[q] = v4;
        if (out) {
          out[4 * q] = from_float<P>(p4.x);
          out[4 * q + 1] = from_float<P>(p4.y);
          out[4 * q + 2] = from_float<P>(p4.z);
          out[4 * q + 3] = from_float<P>(p4.w);
        }
      }
      scalar_from = quads * 4;
    }
    for (int64_t i = scalar_from + first; i < r.numel; i += stride) {
      float p = pr[i], mi = mr[i], vi = vr[i];
      adamw_step(p, gr[i], mi, vi, decay, f);
      pr[i] = p;
      mr[i] = mi;
      vr[i] = vi;
      if (out) out[i] = from_float<P>(p);
    }
  }
}

inline void check_adamw(int64_t count, const AdamWRange* ranges) {
  require_count("adamw_update", "count", count);
  require(count == 0 || ranges != nullptr, "adamw_update: ranges is null but count = ", count);
}

}  // namespace cuda_detail

// m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g²;  p = p (1 - lr wd) - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)
// for every element of every range; ranges [count] live in device memory. One launch.
template <class T>
void adamw_update(const Cuda& ctx, T* params, const T* grads, T* m, T* v, const AdamWRange* ranges, int64_t count,
                  const AdamWStepScalars& s) {
  static_assert(std::is_same_v<T, float>, "adamw_update on the GPU keeps parameters and state in float");
  using namespace cuda_detail;
  check_adamw(count, ranges);
  if (count == 0) return;
  const AdamWFloats f = adamw_floats(s);
  const bool packed = all_aligned16(params, grads, m, v);
  adamw_kernel<float><<<static_cast<unsigned>(sm_count()) * 4, 256, 0, ctx.stream>>>(
      params, static_cast<float*>(nullptr), grads, m, v, ranges, count, f, packed);
  RETNET_CUDA_CHECK_LAUNCH("adamw_kernel");
}

// bf16 parameters with float master weights: the update runs on master (as above) and params receives its bf16
// rounding.
inline void adamw_update(const Cuda& ctx, float* master, __nv_bfloat16* params, const float* grads, float* m, float* v,
                         const AdamWRange* ranges, int64_t count, const AdamWStepScalars& s) {
  using namespace cuda_detail;
  check_adamw(count, ranges);
  if (count == 0) return;
  require(params != nullptr, "adamw_update: the bf16 parameter buffer is null");
  const AdamWFloats f = adamw_floats(s);
  const bool packed = all_aligned16(master, grads, m, v);
  adamw_kernel<__nv_bfloat16><<<static_cast<unsigned>(sm_count()) * 4, 256, 0, ctx.stream>>>(
      master, params, grads, m, v, ranges, count, f, packed);
  RETNET_CUDA_CHECK_LAUNCH("adamw_kernel");
}

}  // namespace retnet
