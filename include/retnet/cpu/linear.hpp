#pragma once
// Bias-free linear layers on the CPU through Eigen, PyTorch weight layout W [out, in].
//
// Conventions (as in llm.c): parameter gradients accumulate (+=); activation gradients overwrite unless
// GradMode::accumulate is asked for (the residual stream and fan-in of several projections add).
#include <algorithm>
#include <cstdint>

#include "retnet/core/backend.hpp"
#include "retnet/cpu/eigen.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace retnet {

enum class GradMode { ignore, overwrite, accumulate };

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
}  // namespace cpu_detail

// y [n, out] = x [n, in] · Wᵀ, W [out, in]; accumulate = true adds into y.
// Few rows (decoding) are split over threads by output rows, since Eigen does not thread matrix-vector work.
template <class T>
void linear_forward(Cpu, T* y, const T* x, const T* w, int64_t n, int64_t in, int64_t out, bool accumulate = false) {
  using namespace cpu_detail;
  MapCMat<T> X(x, n, in);
  MapCMat<T> W(w, out, in);
  const int threads = max_threads();
  if (n <= 32 && threads > 1 && out * in >= 65536) {
    // Split W by rows: each thread streams its own slice of the weights once.
    const int64_t parts = threads;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t lo = out * p / parts, hi = out * (p + 1) / parts;
      if (hi <= lo) continue;
      MapCMat<T> Ws(w + lo * in, hi - lo, in);
      Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<>> Ys(y + lo, n, hi - lo, Eigen::OuterStride<>(out));
      if (n == 1) {
        Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>> yv(y + lo, hi - lo);
        Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>> xv(x, in);
        if (accumulate)
          yv.noalias() += Ws * xv;
        else
          yv.noalias() = Ws * xv;
      } else if (accumulate) {
        Ys.noalias() += X * Ws.transpose();
      } else {
        Ys.noalias() = X * Ws.transpose();
      }
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
