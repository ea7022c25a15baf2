#pragma once
// RMSNorm and LayerNorm over the last dimension (rows of c values), forward and backward.
// The per-row statistics are saved for the backward pass.
#include <cmath>
#include <cstdint>

#include "retnet/core/backend.hpp"

namespace retnet {

// y [n, c] = x · r (· w),  r = (mean(x²) + eps)^-½ saved in rstd [n].  w may be null (no affine).
// y may alias x.
template <class T>
void rmsnorm_forward(Cpu, T* y, T* rstd, const T* x, const T* w, int64_t n, int64_t c, double eps) {
#pragma omp parallel for schedule(static) if (n * c > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const T* xr = x + i * c;
    T* yr = y + i * c;
    T ss = 0;
    for (int64_t j = 0; j < c; ++j) ss += xr[j] * xr[j];
    const T r = T(1) / std::sqrt(ss / T(c) + T(eps));
    if (rstd) rstd[i] = r;
    if (w)
      for (int64_t j = 0; j < c; ++j) yr[j] = xr[j] * r * w[j];
    else
      for (int64_t j = 0; j < c; ++j) yr[j] = xr[j] * r;
  }
}

// dx [n, c] (overwrite, or add when accumulate) = r·dŷ − x·r³·(Σ dŷ⊙x)/c with dŷ = dy⊙w;
// dw [c] += Σ_rows dy ⊙ x · r (skipped if null).  dx may alias dy only when accumulate is false.
template <class T>
void rmsnorm_backward(Cpu, T* dx, T* dw, const T* dy, const T* x, const T* w, const T* rstd, int64_t n, int64_t c,
                      bool accumulate = false) {
  if (dw) {
    for (int64_t i = 0; i < n; ++i) {
      const T r = rstd[i];
      const T* xr = x + i * c;
      const T* dyr = dy + i * c;
      for (int64_t j = 0; j < c; ++j) dw[j] += dyr[j] * xr[j] * r;
    }
  }
#pragma omp parallel for schedule(static) if (n * c > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const T r = rstd[i];
    const T* xr = x + i * c;
    const T* dyr = dy + i * c;
    T* dxr = dx + i * c;
    T dot = 0;
    if (w)
      for (int64_t j = 0; j < c; ++j) dot += dyr[j] * w[j] * xr[j];
    else
      for (int64_t j = 0; j < c; ++j) dot += dyr[j] * xr[j];
    const T k = r * r * r * dot / T(c);
    for (int64_t j = 0; j < c; ++j) {
      const T g = (w ? dyr[j] * w[j] : dyr[j]) * r - xr[j] * k;
      dxr[j] = accumulate ? dxr[j] + g : g;
    }
  }
}

// LayerNorm: y = (x − μ)·r·w + b, r = (var + eps)^-½; saves mean [n] and rstd [n].  w, b may be null.
template <class T>
void layernorm_forward(Cpu, T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t n, int64_t c,
                       double eps) {
#pragma omp parallel for schedule(static) if (n * c > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const T* xr = x + i * c;
    T* yr = y + i * c;
    T m = 0;
    for (int64_t j = 0; j < c; ++j) m += xr[j];
    m /= T(c);
    T var = 0;
    for (int64_t j = 0; j < c; ++j) var += (xr[j] - m) * (xr[j] - m);
    var /= T(c);
    const T r = T(1) / std::sqrt(var + T(eps));
    mean[i] = m;
    rstd[i] = r;
    for (int64_t j = 0; j < c; ++j) {
      T v = (xr[j] - m) * r;
      if (w) v *= w[j];
      if (b) v += b[j];
      yr[j] = v;
    }
  }
}

// dx = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂⊙x̂)), dx̂ = dy⊙w;  dw += Σ dy⊙x̂;  db += Σ dy.
template <class T>
void layernorm_backward(Cpu, T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, const T* mean, const T* rstd,
                        int64_t n, int64_t c, bool accumulate = false) {
  if (dw || db) {
    for (int64_t i = 0; i < n; ++i) {
      const T* xr = x + i * c;
      const T* dyr = dy + i * c;
      for (int64_t j = 0; j < c; ++j) {
        if (dw) dw[j] += dyr[j] * (xr[j] - mean[i]) * rstd[i];
        if (db) db[j] += dyr[j];
      }
    }
  }
#pragma omp parallel for schedule(static) if (n * c > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const T* xr = x + i * c;
    const T* dyr = dy + i * c;
    T* dxr = dx + i * c;
    const T m = mean[i], r = rstd[i];
    T s1 = 0, s2 = 0;
    for (int64_t j = 0; j < c; ++j) {
      const T g = w ? dyr[j] * w[j] : dyr[j];
      s1 += g;
      s2 += g * (xr[j] - m) * r;
    }
    s1 /= T(c);
    s2 /= T(c);
    for (int64_t j = 0; j < c; ++j) {
      const T g = w ? dyr[j] * w[j] : dyr[j];
      const T v = r * (g - s1 - (xr[j] - m) * r * s2);
      dxr[j] = accumulate ? dxr[j] + v : v;
    }
  }
}

}  // namespace retnet
