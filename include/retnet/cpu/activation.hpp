#pragma once
// Element-wise activations and the gated products of the GLU FFN and the retention output gate.
// gelu is the exact (erf) form that torchscale uses; swish is silu(x) = x·σ(x).
#include <cmath>
#include <cstdint>
#include <string>

#include "retnet/core/backend.hpp"
#include "retnet/core/error.hpp"
#include "retnet/core/op_types.hpp"

namespace retnet {

template <class T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <class T>
inline T activate(Activation a, T x) {
  if (a == Activation::swish) return x * sigmoid(x);
  return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
}

// d act / dx: gelu' = Φ(x) + x φ(x);  silu' = σ(x)(1 + x(1 - σ(x))).
template <class T>
inline T activate_grad(Activation a, T x) {
  if (a == Activation::swish) {
    const T s = sigmoid(x);
    return s * (T(1) + x * (T(1) - s));
  }
  const T cdf = T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440)));
  const T pdf = T(0.39894228040143267794) * std::exp(T(-0.5) * x * x);
  return cdf + x * pdf;
}

// y [n] = act(x)
template <class T>
void activation_forward(Cpu, Activation a, T* y, const T* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) y[i] = activate(a, x[i]);
}

// dx [n] = dy · act'(x)  (overwrites)
template <class T>
void activation_backward(Cpu, Activation a, T* dx, const T* dy, const T* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * activate_grad(a, x[i]);
}

// GLU product: y [n] = act(a) ⊙ b
template <class T>
void glu_forward(Cpu, Activation act, T* y, const T* a, const T* b, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) y[i] = activate(act, a[i]) * b[i];
}

// da = dy ⊙ b ⊙ act'(a);  db = dy ⊙ act(a)  (both overwrite; da may alias dy)
template <class T>
void glu_backward(Cpu, Activation act, T* da, T* db, const T* dy, const T* a, const T* b, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const T g = dy[i];
    const T av = a[i];
    db[i] = g * activate(act, av);
    da[i] = g * b[i] * activate_grad(act, av);
  }
}

}  // namespace retnet
