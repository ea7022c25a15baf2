#pragma once
// Bias-free linear layers on the GPU through cuBLAS: the CUDA side of cpu/linear.hpp (PyTorch weight layout
// W [out, in], row-major activations). Float storage computes in exact float unless ctx.allow_tf32 (then tf32
// tensor cores); bf16 storage multiplies on the tensor cores with float accumulation. Parameter gradients
// accumulate (+=); activation gradients overwrite unless GradMode::accumulate.
//
// The ops set ctx.cublas's stream to ctx.stream (where it differs) and its math mode to the default before every
// product.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "retnet/core/op_types.hpp"
#include "retnet/cuda/context.cuh"

namespace retnet {

namespace cuda_detail {

template <class T>
constexpr cudaDataType_t cublas_type() {
  if constexpr (std::is_same_v<T, float>)
    return CUDA_R_32F;
  else
    return CUDA_R_16BF;
}

// C (col-major, m × n, ldc) = alpha · op(A) op(B) + beta · C, in float accumulation. C may be float while A and B
// are bf16 (weight gradients of a bf16 model).
template <class T, class TC = T>
void gemm(const Cuda& ctx, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, const T* a,
          int64_t lda, const T* b, int64_t ldb, float beta, TC* c, int64_t ldc) {
  require(ctx.cublas != nullptr, "linear: the Cuda context has no cuBLAS handle");
  // Setting the stream resets the handle's workspace to cuBLAS's own, so only when it changes: a workspace set
  // with cublasSetWorkspace (which capturing products into a CUDA graph needs) stays.
  cudaStream_t current = nullptr;
  RETNET_CUBLAS_CHECK(cublasGetStream(ctx.cublas, &current));
  if (current != ctx.stream) RETNET_CUBLAS_CHECK(cublasSetStream(ctx.cublas, ctx.stream));
  // A handle left in a tf32 mode would round float products even under CUBLAS_COMPUTE_32F.
  RETNET_CUBLAS_CHECK(cublasSetMathMode(ctx.cublas, CUBLAS_DEFAULT_MATH));
  const cublasComputeType_t compute =
      std::is_same_v<T, float> && ctx.allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const float alpha = 1.0f;
  RETNET_CUBLAS_CHECK(cublasGemmEx(ctx.cublas, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k),
                                   &alpha, a, cublas_type<T>(), static_cast<int>(lda), b, cublas_type<T>(),
                                   static_cast<int>(ldb), &beta, c, cublas_type<TC>(), static_cast<int>(ldc), compute,
                                   CUBLAS_GEMM_DEFAULT));
}

inline void check_linear_sizes(const char* op, int64_t n, int64_t in, int64_t out) {
  require(n >= 0 && in >= 0 && out >= 0, op, ": sizes n = ", n, ", in = ", in, ", out = ", out,
          " must not be negative");
  require(n <= INT_MAX && in <= INT_MAX && out <= INT_MAX, op, ": sizes n = ", n, ", in = ", in, ", out = ", out,
          " exceed cuBLAS's limit of ", INT_MAX);
}

}  // namespace cuda_detail

// y [n, out] = x [n, in] · Wᵀ, W [out, in]; accumulate = true adds into y.
template <class T>
void linear_forward(const Cuda& ctx, T* y, const T* x, const T* w, int64_t n, int64_t in, int64_t out,
                    bool accumulate = false) {
  using namespace cuda_detail;
  check_linear_sizes("linear_forward", n, in, out);
  if (n == 0 || out == 0) return;
  if (in == 0) {  // an empty product: y = 0 (or unchanged when accumulating)
    if (!accumulate) RETNET_CUDA_CHECK(cudaMemsetAsync(y, 0, sizeof(T) * static_cast<size_t>(n * out), ctx.stream));
    return;
  }
  // Column-major view: yᵀ [out, n] = W [out, in] · xᵀ [in, n], where the row-major W is Wᵀ in column-major.
  gemm<T>(ctx, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, w, in, x, in, accumulate ? 1.0f : 0.0f, y, out);
}

// Backward of y = x Wᵀ: dx [n, in] (=, += or skipped per dx_mode) = dy · W;  dw [out, in] += dyᵀ · x (skipped if
// null; G is T or float).
template <class T, class G>
void linear_backward(const Cuda& ctx, T* dx, G* dw, const T* dy, const T* x, const T* w, int64_t n, int64_t in,
                     int64_t out, GradMode dx_mode = GradMode::overwrite) {
  using namespace cuda_detail;
  check_linear_sizes("linear_backward", n, in, out);
  if (n == 0 || in == 0) return;
  if (dx_mode != GradMode::ignore && dx != nullptr) {
    if (out == 0) {
      if (dx_mode == GradMode::overwrite)
        RETNET_CUDA_CHECK(cudaMemsetAsync(dx, 0, sizeof(T) * static_cast<size_t>(n * in), ctx.stream));
    } else {
      // dxᵀ [in, n] = Wᵀ [in, out] · dyᵀ [out, n].
      gemm<T>(ctx, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, w, in, dy, out, dx_mode == GradMode::accumulate ? 1.0f : 0.0f,
              dx, in);
    }
  }
  // dWᵀ [in, out] += xᵀ [in, n] · dy [n, out].
  if (dw != nullptr && out > 0) gemm<T, G>(ctx, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, x, in, dy, out, 1.0f, dw, in);
}

}  // namespace retnet
