#pragma once
// The AdamW update (torch.optim.AdamW's arithmetic) over the ranges of a flat parameter buffer on the CPU.
#include <cmath>
#include <cstdint>

#include "retnet/core/backend.hpp"
#include "retnet/core/op_types.hpp"

namespace retnet {

// m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g²;  p = p (1 - lr wd) - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)
// for every element of every range; ranges [count] live in the backend's memory (here: the host).
template <class T>
void adamw_update(Cpu, T* params, const T* grads, T* m, T* v, const AdamWRange* ranges, int64_t count,
                  const AdamWStepScalars& s) {
  const double b1 = s.beta1, b2 = s.beta2;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(s.t));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(s.t));
  const T step_size = static_cast<T>(s.lr / bc1), inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(bc2));
  const T eps = static_cast<T>(s.eps);
  for (int64_t ri = 0; ri < count; ++ri) {
    const AdamWRange& r = ranges[ri];
    const T decay = r.decay ? static_cast<T>(1.0 - s.lr * s.weight_decay) : T(1);
    T* p = params + r.offset;
    const T* g = grads + r.offset;
    T* mr = m + r.offset;
    T* vr = v + r.offset;
#pragma omp parallel for schedule(static) if (r.numel > 65536)
    for (int64_t i = 0; i < r.numel; ++i) {
      mr[i] = static_cast<T>(b1) * mr[i] + static_cast<T>(1 - b1) * g[i];
      vr[i] = static_cast<T>(b2) * vr[i] + static_cast<T>(1 - b2) * g[i] * g[i];
      p[i] = p[i] * decay - step_size * mr[i] / (std::sqrt(vr[i]) * inv_sqrt_bc2 + eps);
    }
  }
}

}  // namespace retnet
