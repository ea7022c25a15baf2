#pragma once
// Shared by the GPU test files: whether the program can run on a CUDA device (without one every GPU test case
// returns at once and the program says so, once), and the backend the model-level tests share.
#include <cuda_runtime.h>

#include <cstdio>

#include "retnet/cuda/context.cuh"

namespace retnet_test {

inline bool have_gpu() {
  static const bool ok = [] {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
      (void)cudaGetLastError();
      std::printf("skipped: no CUDA device (%s)\n", e == cudaSuccess ? "none found" : cudaGetErrorString(e));
      return false;
    }
    return true;
  }();
  return ok;
}

// One stream and cuBLAS handle for the whole program; call only after have_gpu().
inline const retnet::Cuda& gpu() {
  static const retnet::CudaContext ctx;
  return ctx.backend();
}

}  // namespace retnet_test
