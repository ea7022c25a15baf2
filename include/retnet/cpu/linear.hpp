#pragma once
// Bias-free linear layers on the CPU through Eigen, PyTorch weight layout W [out, in].
//
// Conventions (as in llm.c): parameter gradients accumulate (+=); activation gradients overwrite unless
// GradMode::accumulate is asked for (the residual stream and fan-in of several projections add).
#include <algorithm>
#include <cstdint>

#include "retnet/core/backend.hpp"
#include "retnet/core/op_types.hpp"
#include "retnet/cpu/eigen.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace retnet {

namespace cpu_detail {
template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MapMat = Eigen::Map<RowMat<T>, Eigen::Aligned16>;
template <class T>
using MapCMat = Eigen::Map<const RowMat<T>>;
template <class T>
using MapMatU = Eigen::Map<RowMat<T>>;

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// a[j] = xr · wj over k elements, for four weight rows w0..w3 (the inner loop of the small-row kernels).
template <class T>
inline void dot4(const T* xr, const T* w0, const T* w1, const T* w2, const T* w3, int64_t k, T (&a)[4]) {
  T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int64_t i = 0; i < k; ++i) {
    const T xv = xr[i];
    a0 += xv * w0[i];
    a1 += xv * w1[i];
    a2 += xv * w2[i];
    a3 += xv * w3[i];
  }
  a[0] = a0, a[1] = a1, a[2] = a2, a[3] = a3;
}

// y[:, lo:hi] (=, +=) x · W[lo:hi]ᵀ for few rows of x: four weight rows at a time, each reused for all rows.
template <class T>
void small_rows_block(T* y, const T* x, const T* w, int64_t n, int64_t in, int64_t out, int64_t lo, int64_t hi,
                      bool accumulate) {
  int64_t o = lo;
  for (; o + 4 <= hi; o += 4) {
    const T* w0 = w + o * in;
    const T* w1 = w0 + in;
    const T* w2 = w1 + in;
    const T* w3 = w2 + in;
    for (int64_t r = 0; r < n; ++r) {
      T a[4];
      dot4(x + r * in, w0, w1, w2, w3, in, a);
      T* yr = y + r * out + o;
      for (int j = 0; j < 4; ++j) yr[j] = accumulate ? yr[j] + a[j] : a[j];
    }
  }
  for (; o < hi; ++o) {
    const T* wr = w + o * in;
    for (int64_t r = 0; r < n; ++r) {
      const T* xr = x + r * in;
      T a = 0;
#pragma omp simd reduction(+ : a)
      for (int64_t i = 0; i < in; ++i) a += xr[i] * wr[i];
      y[r * out + o] = accumulate ? y[r * out + o] + a : a;
    }
  }
}
}  // namespace cpu_detail

// y [n, out] = x [n, in] · Wᵀ, W [out, in]; accumulate = true adds into y.
// Few rows (decoding) use a packing-free kernel split over threads by output rows.
template <class T>
void linear_forward(Cpu, T* y, const T* x, const T* w, int64_t n, int64_t in, int64_t out, bool accumulate = false) {
  using namespace cpu_detail;
  MapCMat<T> X(x, n, in);
  MapCMat<T> W(w, out, in);
  if (n <= 32) {
    // Few rows (decoding): stream each weight row once and use it for every input row while it sits in L1;
    // no packing of W (which would read and write the whole matrix again). Threads split the output rows.
    const int64_t parts = (max_threads() > 1 && out * in >= 65536) ? max_threads() : 1;
#pragma omp parallel for schedule(static) if (parts > 1)
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t lo = out * p / parts, hi = out * (p + 1) / parts;
      small_rows_block(y, x, w, n, in, out, lo, hi, accumulate);
    }
    return;
  }
  MapMatU<T> Y(y, n, out);
  if (accumulate)
    Y.noalias() += X * W.transpose();
  else
    Y.noalias() = X * W.transpose();
}

// Backward of y = x Wᵀ: dx [n, in] (=, += or skipped per dx_mode) = dy · W;  dw [out, in] += dyᵀ · x (skipped if null).
template <class T>
void linear_backward(Cpu, T* dx, T* dw, const T* dy, const T* x, const T* w, int64_t n, int64_t in, int64_t out,
                     GradMode dx_mode = GradMode::overwrite) {
  using namespace cpu_detail;
  MapCMat<T> DY(dy, n, out);
  if (dx_mode != GradMode::ignore && dx != nullptr) {
    MapCMat<T> W(w, out, in);
    MapMatU<T> DX(dx, n, in);
    if (dx_mode == GradMode::accumulate)
      DX.noalias() += DY * W;
    else
      DX.noalias() = DY * W;
  }
  if (dw != nullptr) {
    MapCMat<T> X(x, n, in);
    MapMatU<T> DW(dw, out, in);
    DW.noalias() += DY.transpose() * X;
  }
}

}  // namespace retnet
