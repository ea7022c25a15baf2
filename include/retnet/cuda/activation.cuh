#pragma once
// Element-wise activations and the GLU product on the GPU: the CUDA side of cpu/activation.hpp (exact erf gelu,
// swish = x·σ(x)), in float arithmetic for every storage type.
#include <cuda_runtime.h>

#include <cstdint>

#include "retnet/core/op_types.hpp"
#include "retnet/cuda/context.cuh"
#include "retnet/cuda/ops_common.cuh"

namespace retnet {

namespace cuda_detail {

__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

template <Activation A>
__device__ __forceinline__ float act_f(float x) {
  if constexpr (A == Activation::swish)
    return x * sigmoid_f(x);
  else
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
}

// d act / dx: gelu' = Φ(x) + x φ(x);  silu' = σ(x)(1 + x(1 - σ(x))).
template <Activation A>
__device__ __forceinline__ float act_grad_f(float x) {
  if constexpr (A == Activation::swish) {
    const float s = sigmoid_f(x);
    return s * (1.0f + x * (1.0f - s));
  } else {
    const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752440f));
    const float pdf = 0.39894228040143267794f * expf(-0.5f * x * x);
    return cdf + x * pdf;
  }
}

template <Activation A>
struct ActForward {
  __device__ void operator()(float* y, const float* x) const { y[0] = act_f<A>(x[0]); }
};
template <Activation A>
struct ActBackward {  // x = (dy, x)
  __device__ void operator()(float* y, const float* x) const { y[0] = x[0] * act_grad_f<A>(x[1]); }
};
template <Activation A>
struct GluForward {  // x = (a, b)
  __device__ void operator()(float* y, const float* x) const { y[0] = act_f<A>(x[0]) * x[1]; }
};
template <Activation A>
struct GluBackward {  // x = (dy, a, b); y = (da, db)
  __device__ void operator()(float* y, const float* x) const {
    y[0] = x[0] * x[2] * act_grad_f<A>(x[1]);
    y[1] = x[0] * act_f<A>(x[1]);
  }
};

template <template <Activation> class Op, class T, int NOut, int NIn>
void launch_activation(const Cuda& ctx, const char* op, Activation a, const MapArgs<T, NOut, NIn>& args, int64_t n) {
  if (a == Activation::swish)
    launch_map(ctx, op, args, n, Op<Activation::swish>{});
  else
    launch_map(ctx, op, args, n, Op<Activation::gelu>{});
}

}  // namespace cuda_detail

// y [n] = act(x)  (y may alias x)
template <class T>
void activation_forward(const Cuda& ctx, Activation a, T* y, const T* x, int64_t n) {
  cuda_detail::launch_activation<cuda_detail::ActForward>(ctx, "activation_forward", a,
                                                          cuda_detail::MapArgs<T, 1, 1>{{y}, {x}}, n);
}

// dx [n] = dy · act'(x)  (overwrites; dx may alias dy)
template <class T>
void activation_backward(const Cuda& ctx, Activation a, T* dx, const T* dy, const T* x, int64_t n) {
  cuda_detail::launch_activation<cuda_detail::ActBackward>(ctx, "activation_backward", a,
                                                           cuda_detail::MapArgs<T, 1, 2>{{dx}, {dy, x}}, n);
}

// GLU product: y [n] = act(a) ⊙ b
template <class T>
void glu_forward(const Cuda& ctx, Activation act, T* y, const T* a, const T* b, int64_t n) {
  cuda_detail::launch_activation<cuda_detail::GluForward>(ctx, "glu_forward", act,
                                                          cuda_detail::MapArgs<T, 1, 2>{{y}, {a, b}}, n);
}

// da = dy ⊙ b ⊙ act'(a);  db = dy ⊙ act(a)  (both overwrite; da may alias dy)
template <class T>
void glu_backward(const Cuda& ctx, Activation act, T* da, T* db, const T* dy, const T* a, const T* b, int64_t n) {
  cuda_detail::launch_activation<cuda_detail::GluBackward>(ctx, "glu_backward", act,
                                                           cuda_detail::MapArgs<T, 2, 3>{{da, db}, {dy, a, b}}, n);
}

}  // namespace retnet
